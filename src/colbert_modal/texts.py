"""Texts from memory: records (id, text, metadata) that live in an index as its files do.

:meth:`ColbertIndexer.index_texts <colbert_modal.ColbertIndexer.index_texts>`
checks every record first (:func:`check_records`: a bad one is a
:class:`~colbert_modal.errors.ConfigurationError` naming it, before any work),
then plans the update like :func:`~colbert_modal.pipeline.plan_update` does for
files (:func:`plan_texts`): the result is the same plain-data
:class:`~colbert_modal.pipeline.UpdatePlan`, applied by the same engine code,
locally or on Modal, sharded or not.

A record is keyed in the manifest as ``"text:" + id``
(:func:`~colbert_modal.records.text_key`), never a file's absolute path, so
records and files share an index without colliding. Its chunks carry that key
as ``source`` in the index and the id alone in hits, reports and filters
(:func:`~colbert_modal.records.public_source`); they have no pages. Its
content hash is the SHA-256 of its text: the same id with the same text is
unchanged (nothing encoded), new metadata alone is a metadata-only update.
"""

from __future__ import annotations

import hashlib
import itertools
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .chunking import Chunker
from .errors import ConfigurationError
from .filters import check_metadata
from .pipeline import MAX_CHUNKS_PER_FILE, Settings, UpdatePlan, check_settings
from .records import (
    Chunk,
    Document,
    FileWarning,
    IndexReport,
    Page,
    SkippedFile,
    TextRecord,
    public_source,
    text_key,
)
from .store import FileEntry, Manifest

__all__ = ["check_ids", "check_records", "plan_text_deletion", "plan_texts", "public_report"]

_FIELDS = ("id", "text", "metadata")
_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80


def check_records(records: Iterable[Any]) -> list[TextRecord]:
    """``records`` as checked :class:`TextRecord` s; ConfigurationError naming the first bad one (and why).

    Each item is a string (its id: :meth:`TextRecord.from_text`), a
    :class:`TextRecord`, a dict with ``id``, ``text`` and optional
    ``metadata``, or an object with ``.id`` and ``.text`` (and optional
    ``.metadata``), such as a :class:`~colbert_modal.records.Document`.
    """
    if isinstance(records, (str, bytes, Mapping, TextRecord)):
        raise ConfigurationError("index_texts() takes a list (an iterable) of texts or records, not one; "
                                 "wrap it in a list")
    try:
        items = list(records)
    except TypeError as exc:
        raise ConfigurationError(f"index_texts() takes an iterable of texts or records, got {type(records).__name__}"
                                 ) from exc
    out: list[TextRecord] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        record = _record(item, i)
        j = first.setdefault(record.id, i)
        if j != i:
            same = " (equal plain strings get the same id)" if isinstance(item, str) else ""
            raise ConfigurationError(f"record #{i} (id {_short.repr(record.id)}): duplicate id, already given by "
                                     f"record #{j}{same}; ids must be unique in one call")
        out.append(record)
    return out


def _record(item: Any, i: int) -> TextRecord:
    """One item of ``index_texts`` as a checked record (``i``: its 0-based position, for messages)."""
    name = f"record #{i}"
    if isinstance(item, str):
        _check_text(item, name)
        return TextRecord.from_text(item)
    meta: Any
    if isinstance(item, TextRecord):
        rid, text, meta = item.id, item.text, item.metadata
    elif isinstance(item, Mapping):
        unknown = [k for k in item if k not in _FIELDS]
        if unknown:
            raise ConfigurationError(f"{name}: unknown key {_short.repr(unknown[0])}; a record has 'id', 'text' "
                                     "and optional 'metadata'")
        for key in ("id", "text"):
            if key not in item:
                hint = "; give plain strings to have ids made from the text" if key == "id" else ""
                raise ConfigurationError(f"{name}: no {key!r}{hint}")
        rid, text, meta = item["id"], item["text"], item.get("metadata")
    elif hasattr(item, "id") and hasattr(item, "text"):
        rid, text, meta = item.id, item.text, getattr(item, "metadata", None)
    else:
        raise ConfigurationError(f"{name}: must be a string, a TextRecord or a dict with 'id' and 'text', "
                                 f"got {type(item).__name__}")
    if not isinstance(rid, str):
        raise ConfigurationError(f"{name}: id must be a string, got {type(rid).__name__} {_short.repr(rid)}")
    if not rid.strip():
        raise ConfigurationError(f"{name}: empty id")
    _check_text(rid, f"{name}: id {_short.repr(rid)}")
    name = f"{name} (id {_short.repr(rid)})"
    if not isinstance(text, str):
        raise ConfigurationError(f"{name}: text must be a string, got {type(text).__name__}")
    _check_text(text, name)
    meta = check_metadata({} if meta is None else meta, name, ())
    return TextRecord(id=rid, text=text, metadata=meta)


def _check_text(text: str, name: str) -> None:
    if not text.strip():
        raise ConfigurationError(f"{name}: empty text (nothing to index)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name}: holds characters that are not valid Unicode (lone surrogates)") from None


def check_ids(ids: Iterable[str]) -> list[str]:
    """``ids`` (of text records) as a list of non-empty strings; ConfigurationError otherwise."""
    if isinstance(ids, str):
        ids = [ids]
    try:
        out = list(ids)
    except TypeError as exc:
        raise ConfigurationError(f"ids must be a record id or a list of them, got {type(ids).__name__}") from exc
    for i, rid in enumerate(out):
        if not isinstance(rid, str) or not rid.strip():
            raise ConfigurationError(f"id #{i}: must be a non-empty string, got {_short.repr(rid)}")
    return out


def _document_id(record: TextRecord) -> str:
    """Its chunks' id stem: unique per (id, text), so equal texts under two ids never share chunk ids."""
    data = b"colbert-modal text record\0" + record.id.encode("utf-8") + b"\0" + record.text.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def plan_texts(
    records: list[TextRecord], *, name: str, settings: Settings, manifest: Manifest | None,
    chunker: Callable[[], Chunker], max_chunks: int = MAX_CHUNKS_PER_FILE,
) -> UpdatePlan:
    """What ``records`` (checked) change against ``manifest``, with the chunks of the new and changed ones.

    Everything else in the index (files, records not given) is kept as it is.
    A record that would make more than ``max_chunks`` chunks is skipped (with
    the reason; an older version of it is kept, with a warning).
    """
    check_settings(manifest, settings, rebuild=False, advice=(
        "index_texts adds to the index as it is built: use its settings (leave model, max_tokens, overlap unset), "
        "another index name, or rebuild it first with index(paths, rebuild=True)."))
    plan = UpdatePlan(name=name, settings=settings, base_generation=manifest.generation if manifest else 0)
    old = dict(manifest.files) if manifest is not None else {}
    made: Chunker | None = None
    given: set[str] = set()
    for record in records:
        key = text_key(record.id)
        given.add(key)
        content_hash = hashlib.sha256(record.text.encode("utf-8")).hexdigest()
        entry = old.get(key)
        if entry is not None and entry.content_hash == content_hash:
            plan.unchanged.append(key)
            if entry.metadata != record.metadata:
                plan.metadata[key] = dict(record.metadata)
            continue
        doc = Document(id=_document_id(record), source=key, content_hash=content_hash,
                       pages=[Page(number=1, text=record.text)])
        made = made or chunker()
        chunks = list(itertools.islice(made.chunk(doc), max_chunks + 1))
        if len(chunks) > max_chunks:
            plan.skipped.append(SkippedFile(
                path=record.id, error="TooManyChunks",
                reason=f"more than {max_chunks} chunks, over max_chunks_per_file={max_chunks}",
            ))
            if entry is not None:
                plan.unchanged.append(key)
                plan.warnings.append(FileWarning(path=record.id, message="kept the previously indexed version"))
            continue
        chunks = [_bare(c, record.metadata) for c in chunks]
        plan.new_files[key] = FileEntry(
            content_hash=content_hash, document_id=doc.id, chunk_ids=[c.id for c in chunks],
            size=len(record.text.encode("utf-8")), metadata=dict(record.metadata),
        )
        plan.new_chunks.extend(chunks)
    plan.unchanged.extend(p for p in old if p not in given)
    return plan


def _bare(chunk: Chunk, metadata: Mapping[str, Any]) -> Chunk:
    """A record's chunk: no pages (a record has none), the record's metadata."""
    return chunk.model_copy(update={"pages": [], "metadata": dict(metadata)})


def plan_text_deletion(ids: list[str], *, manifest: Manifest) -> UpdatePlan:
    """A plan that drops the text records ``ids``; an id not in the index is reported in ``skipped``."""
    settings = Settings(manifest.model, manifest.max_tokens, manifest.overlap)
    plan = UpdatePlan(name=manifest.name, settings=settings, base_generation=manifest.generation)
    remove: set[str] = set()
    for rid in ids:
        key = text_key(rid)
        if key in manifest.files:
            remove.add(key)
        else:
            plan.skipped.append(SkippedFile(path=rid, reason="no text record with this id in the index",
                                            error="IndexNotFoundError"))
    plan.remove = sorted(remove)
    plan.unchanged = sorted(set(manifest.files) - remove)
    return plan


def public_report(report: IndexReport) -> IndexReport:
    """``report`` with text records named by their ids (as hits name them), files by their paths."""
    def names(keys: list[str]) -> list[str]:
        return [public_source(k) for k in keys]

    return report.model_copy(update={
        "indexed": names(report.indexed), "unchanged": names(report.unchanged), "removed": names(report.removed),
        "metadata_updated": names(report.metadata_updated),
    })
