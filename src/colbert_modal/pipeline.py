"""The first half of an index update: plan it where the files are.

:func:`plan_update` runs on the caller's machine: it finds the files, decides
what changed against the index's manifest, loads and chunks only those (no
torch needed). The resulting :class:`UpdatePlan` is plain data (it pickles),
so it can travel to a Modal container.

The second half, :func:`colbert_modal.updates.apply_update`, runs where the
index lives (this process, or a GPU container with the index on a Volume).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chunking import Chunker
from .errors import (
    ConfigurationError,
    NoDocumentsError,
    SettingsMismatchError,
)
from .filters import check_metadata, glob_path
from .loaders import LOADER_KEYS, Passwords, discover, hash_file, iter_documents
from .loadpool import ENV_WORKERS, load_batch, worker_count
from .ocr import OcrCache, OcrJob, OcrSettings, PendingOcr, bounded_workers
from .progress import Progress, Stage
from .records import Chunk, Document, FileWarning, IndexReport, SkippedFile, is_text_key
from .store import FileEntry, Manifest

__all__ = [
    "MAX_CHUNKS_PER_FILE",
    "MetadataSpec",
    "Settings",
    "UpdatePlan",
    "check_settings",
    "nothing_to_index",
    "plan_deletion",
    "plan_update",
    "resolve_metadata",
    "shard_count",
    "with_metadata",
]

#: ``index(..., metadata=)``: a mapping from a path, file name or glob to a dict, or a callable ``(Path) -> dict``.
MetadataSpec = Mapping[str, Mapping[str, Any]] | Callable[[Path], Mapping[str, Any]] | None


#: Default cap on the chunks one file may add (about 1.3M tokens at 256-token
#: chunks, a ~2,500-page book); a file over it is skipped, never truncated.
MAX_CHUNKS_PER_FILE = 5000


@dataclass(frozen=True)
class Settings:
    """What an index is built with; changing any of it needs a rebuild."""

    model: str
    max_tokens: int
    overlap: int
    #: how many shards asked for (see :mod:`colbert_modal.sharding`); None: the index's, or as its size needs
    shard_count: int | None = None


def shard_count(manifest: Manifest | None) -> int:
    """How many shards the index of ``manifest`` has (1: unsharded, or no index)."""
    return manifest.shard_count if manifest is not None else 1


#: What a settings mismatch advises by default (``index()``, which takes ``rebuild=``).
REBUILD_ADVICE = "Pass rebuild=True (CLI: --rebuild) to re-index everything with the new settings, or use another index name."


def check_settings(
    manifest: Manifest | None, settings: Settings, *, rebuild: bool, advice: str = REBUILD_ADVICE
) -> None:
    if manifest is None or rebuild:
        return
    diffs = [
        f"{key}: index has {getattr(manifest, key)!r}, asked for {getattr(settings, key)!r}"
        for key in ("model", "max_tokens", "overlap")
        if getattr(manifest, key) != getattr(settings, key)
    ]
    wanted = settings.shard_count
    if wanted is not None and wanted != shard_count(manifest):
        diffs.append(f"shards: index has {shard_count(manifest)}, asked for {wanted}")
    if diffs:
        raise SettingsMismatchError(
            f"index {manifest.name!r} was built with other settings ({'; '.join(diffs)}). {advice}"
        )


@dataclass
class UpdatePlan:
    """What one ``index``/``delete`` call wants to change. Plain data; pickles."""

    name: str
    settings: Settings
    base_generation: int  # the generation this plan was computed against (0: none)
    rebuild: bool = False
    new_files: dict[str, FileEntry] = field(default_factory=dict)
    new_chunks: list[Chunk] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: new user metadata of files whose content is unchanged (nothing to encode)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: unchanged files whose size or mtime moved: path -> (size, mtime) to record
    refreshed: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: pages OCR'd (or read from the OCR cache) per file of new_files, and the engine that read them
    ocr_pages: dict[str, list[int]] = field(default_factory=dict)
    ocr_engine: str | None = None

    @property
    def is_noop(self) -> bool:
        return not (self.new_files or self.remove or self.rebuild or self.metadata)


def resolve_metadata(spec: MetadataSpec, path: Path) -> dict[str, Any] | None:
    """The user metadata ``spec`` gives file ``path`` (checked), or None where it says nothing of it.

    A mapping's keys are matched against the absolute path, a path as given
    (``~`` expanded), the file name, or a shell glob on the whole path or its
    tail; every matching entry applies, in the mapping's order (later keys
    win). A callable is called with the path and its dict is the metadata.
    Raises ConfigurationError for a value that is not a dict of JSON scalars
    (or lists of them), or a key colliding with a built-in one.
    """
    if spec is None:
        return None
    if callable(spec):
        try:
            got = spec(path)
        except Exception as exc:
            raise ConfigurationError(f"the metadata callable failed for {path}: {type(exc).__name__}: {exc}") from exc
        return check_metadata(got, str(path), LOADER_KEYS)
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            f"metadata must be a mapping from path, file name or glob to a dict, or a callable, got {type(spec).__name__}"
        )
    found: dict[str, Any] | None = None
    full = str(path)
    for key, value in spec.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"metadata keys must be paths, file names or globs (strings), got {key!r}")
        given = os.path.abspath(os.path.expanduser(key))
        if key in (full, path.name) or given == full or glob_path(full, key):
            found = {**(found or {}), **check_metadata(value, f"{full} (entry {key[:200]!r})", LOADER_KEYS)}
    return found


def with_metadata(chunk: Chunk, old: Mapping[str, Any], new: Mapping[str, Any]) -> Chunk:
    """``chunk`` with the user metadata ``old`` replaced by ``new`` (the loaders' keys kept)."""
    meta = {k: v for k, v in chunk.metadata.items() if k not in old}
    meta.update(new)
    return chunk if meta == chunk.metadata else chunk.model_copy(update={"metadata": meta})


def plan_update(
    paths: Iterable[str | os.PathLike[str]],
    *,
    name: str,
    settings: Settings,
    manifest: Manifest | None,
    chunker: Chunker | Callable[[], Chunker],
    passwords: Passwords = None,
    rebuild: bool = False,
    keep_missing: bool = False,
    progress: Progress | None = None,
    metadata: MetadataSpec = None,
    follow_symlinks: bool = False,
    max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
    workers: int | None = None,
    ocr: OcrSettings | None = None,
    ocr_remote: RemoteOcr | None = None,
) -> UpdatePlan:
    """Decide what changed under ``paths`` and load/chunk just that.

    ``progress`` shows the stages: discovering, loading (files), chunking
    (files, noting the chunks); with loader processes, one loading stage
    counts the files and notes the chunks.
    ``metadata`` (see :func:`resolve_metadata`) sets the user metadata of
    the files it names; the others keep theirs. A file whose metadata alone
    changed goes into ``plan.metadata``: nothing is loaded or encoded.
    ``follow_symlinks``: see :func:`~colbert_modal.loaders.discover`. A file
    that would make more than ``max_chunks_per_file`` chunks is skipped (with
    the reason), never truncated.

    ``workers``: loader processes for a big batch (default
    ``$COLBERT_MODAL_LOAD_WORKERS``, else the usable cores; 1: none; see
    :func:`~colbert_modal.loadpool.worker_count`). Each builds its chunker
    from ``settings``, so ``chunker`` must be a factory of that chunker; a
    :class:`Chunker` instance is used as is, in this process. The plan is the
    same either way.

    ``ocr``: how to OCR PDF pages without a text layer (see :mod:`colbert_modal.ocr`; None: no OCR).
    Where ``ocr.remote``, the pages to OCR go to ``ocr_remote`` (the Modal OCR function, mapped
    over the pages), their results into the OCR cache, and their files are read again from it.
    """
    check_settings(manifest, settings, rebuild=rebuild)
    if isinstance(max_chunks_per_file, bool) or not isinstance(max_chunks_per_file, int) or max_chunks_per_file < 1:
        raise ConfigurationError(f"max_chunks_per_file must be a positive integer, got {max_chunks_per_file!r}")
    progress = progress if progress is not None else Progress(False)
    t0 = time.perf_counter()
    plan = UpdatePlan(name=name, settings=settings, base_generation=manifest.generation if manifest else 0, rebuild=rebuild)
    old = dict(manifest.files) if manifest and not rebuild else {}
    with progress.stage("discovering", unit="file") as stage:
        files, skipped = discover(paths, follow_symlinks=follow_symlinks)
        stage.update(len(files))
    plan.skipped.extend(skipped)

    wanted = {str(f): resolve_metadata(metadata, f) for f in files} if metadata is not None else {}
    to_load: list[Path] = []
    before: dict[str, os.stat_result] = {}  # taken before the file is read: what the manifest records
    for f in files:
        key = str(f)
        entry = old.get(key)
        meta = wanted.get(key)
        if entry is not None and meta is not None and meta != entry.metadata:
            plan.metadata[key] = meta  # dropped again below if the file is re-indexed
        try:
            st = before[key] = f.stat()
        except OSError:
            to_load.append(f)  # the loader reports the error
            continue
        if entry is not None and stat.S_ISREG(st.st_mode):  # anything else: the loader says why it is skipped
            if entry.size == st.st_size and entry.mtime == st.st_mtime:
                plan.unchanged.append(key)
                continue
            if _safe_hash(f) == entry.content_hash:
                plan.unchanged.append(key)
                plan.refreshed[key] = (st.st_size, st.st_mtime)
                continue
        to_load.append(f)
    t1 = time.perf_counter()

    if ocr is not None and ocr.on and manifest is not None and manifest.ocr and manifest.ocr != ocr.engine:
        plan.warnings.append(FileWarning(path=name, message=(
            f"the index's scanned pages were OCR'd with {manifest.ocr}, this is {ocr.engine}: new and changed "
            "files are OCR'd with it; rebuild=True OCRs them all again")))
    t2 = _load_and_chunk(
        plan, to_load, old=old, wanted=wanted, before=before, chunker=chunker, passwords=passwords,
        progress=progress, max_chunks_per_file=max_chunks_per_file, workers=workers, ocr=ocr, ocr_remote=ocr_remote,
    )
    t3 = time.perf_counter()

    present = set(plan.unchanged) | set(plan.new_files)
    if not keep_missing:
        # text records (index_texts) are no files: only delete_texts removes them
        plan.remove = sorted(p for p in old if p not in present and not is_text_key(p) and not os.path.exists(p))
    gone = set(plan.remove)  # the index's other files (outside ``paths``, or kept missing) stay as they are
    plan.unchanged.extend(p for p in old if p not in present and p not in gone)
    plan.timings = {"discover": t1 - t0, "load": t2 - t1, "chunk": t3 - t2}
    return plan


def _load_and_chunk(
    plan: UpdatePlan, to_load: list[Path], *, old: dict[str, FileEntry], wanted: dict[str, dict[str, Any] | None],
    before: dict[str, os.stat_result], chunker: Chunker | Callable[[], Chunker], passwords: Passwords,
    progress: Progress, max_chunks_per_file: int, workers: int | None, ocr: OcrSettings | None = None,
    ocr_remote: RemoteOcr | None = None,
) -> float:
    """Load and chunk ``to_load`` into ``plan`` (in this process, or in loader processes); returns when loading ended.

    Both ways give the same plan: files are taken in input order, and duplicates, the chunk cap and metadata
    are decided here. In this process each document is chunked as it loads, up to the cap: memory follows the
    biggest file, not the batch. ``before``: each file's stat from before it was read, which the manifest
    records (a file changed while it was read is read again by the next update).
    """
    n_workers = 1 if isinstance(chunker, Chunker) else worker_count(len(to_load), workers)
    if workers is None and not os.environ.get(ENV_WORKERS):  # the default, one per core: bounded where they OCR
        n_workers = bounded_workers(n_workers, ocr)
    made: dict[str, list[Chunk]] | None = None
    items: Iterable[Any]
    stage = None
    if not to_load:
        items = []
    elif n_workers > 1:
        stage = progress.stage("loading", total=len(to_load), unit="file")
        settings = (plan.settings.model, plan.settings.max_tokens, plan.settings.overlap)
        items, made = load_batch(to_load, passwords, settings=settings, workers=n_workers,
                                 max_chunks=max_chunks_per_file, stage=stage, ocr=ocr)
    else:
        items = iter_documents(to_load, passwords=passwords, ocr=ocr)
        loading = progress.stage("loading", total=len(to_load), unit="file")
        items = progress.count(items, loading, counts=lambda item: not isinstance(item, FileWarning))

    def skip(item: SkippedFile) -> None:
        if item.path in old:
            plan.warnings.append(FileWarning(path=item.path, message=f"kept the previously indexed version: {item.reason}"))
            plan.unchanged.append(item.path)
        plan.skipped.append(item)

    seen_hashes = {e.content_hash: p for p, e in old.items() if p in plan.unchanged and not is_text_key(p)}
    chunking: Stage | None = None
    chunk_seconds = 0.0
    pending: list[PendingOcr] = []
    for doc in _then_ocrd(items, pending, passwords=passwords, ocr=ocr, ocr_remote=ocr_remote):
        if isinstance(doc, PendingOcr):
            pending.append(doc)
        elif isinstance(doc, FileWarning):
            plan.warnings.append(doc)
        elif isinstance(doc, SkippedFile):
            skip(doc)
        if not isinstance(doc, Document):
            continue
        dup = seen_hashes.get(doc.content_hash)
        if dup is not None and dup != doc.source:
            plan.skipped.append(SkippedFile(path=doc.source, reason=f"same content as {dup}", error="DuplicateFile"))
            continue
        seen_hashes[doc.content_hash] = doc.source
        if "ocr_pages" in doc.metadata:
            plan.ocr_pages[doc.source] = list(doc.metadata["ocr_pages"])
            plan.ocr_engine = doc.metadata.get("ocr_engine")
        if made is not None and doc.source in made:
            chunks = made[doc.source]
        else:
            chunker = chunker if isinstance(chunker, Chunker) else chunker()
            chunking = chunking or progress.stage("chunking", total=len(to_load), unit="file")
            t = time.perf_counter()
            chunks = list(itertools.islice(chunker.chunk(doc), max_chunks_per_file + 1))
            chunk_seconds += time.perf_counter() - t
            chunking.update(1)
        _add_file(plan, doc, chunks, old=old, wanted=wanted, stat_before=before.get(doc.source), skip=skip,
                  max_chunks_per_file=max_chunks_per_file)
    for done in (chunking, stage):
        if done is not None:
            done.note(f"{len(plan.new_chunks)} chunks" + (f", {n_workers} processes" if done is stage else ""))
            done.close()
    return time.perf_counter() - chunk_seconds


#: Remote mode's OCR: pages to OCR in, each page's result (or the exception it raised) out, in order.
RemoteOcr = Callable[[list[OcrJob]], list[Any]]

#: Pages sent to the remote OCR function per call (each call maps over them).
OCR_BATCH = 256


def _then_ocrd(
    items: Iterable[Any], pending: list[PendingOcr], *, passwords: Passwords, ocr: OcrSettings | None,
    ocr_remote: RemoteOcr | None,
) -> Iterable[Any]:
    """``items``, then (remote mode) the files of ``pending`` read again once their pages are OCR'd remotely.

    ``pending`` fills as ``items`` are consumed. The results go into the OCR cache, so the
    loader finds them there; a page that failed remotely is a warning naming it.
    """
    yield from items
    if not pending or ocr is None:
        return
    cache = OcrCache(ocr.cache_dir)
    errors: dict[str, dict[int, str]] = {p.content_hash: {} for p in pending}
    jobs = [job for p in pending for job in p.jobs]
    for start in range(0, len(jobs), OCR_BATCH):
        batch = jobs[start:start + OCR_BATCH]
        outputs = ocr_remote(batch) if ocr_remote is not None else [None] * len(batch)
        done: dict[str, dict[int, dict[str, Any]]] = {}
        for job, out in zip(batch, outputs, strict=True):
            if isinstance(out, dict):
                done.setdefault(job.content_hash, {})[job.page] = out
            else:
                reason = str(out) if isinstance(out, BaseException) else "no OCR function to run it"
                errors[job.content_hash][job.page] = reason if reason.startswith("page ") else f"page {job.page}: {reason}"
        for content_hash, pages in done.items():
            cache.store(content_hash, ocr.engine, pages)
    again = dataclasses.replace(ocr, errors=errors)
    yield from iter_documents([Path(p.path) for p in pending], passwords=passwords, ocr=again)


def _add_file(
    plan: UpdatePlan, doc: Document, chunks: list[Chunk], *, old: dict[str, FileEntry],
    wanted: dict[str, dict[str, Any] | None], stat_before: os.stat_result | None, skip: Callable[[SkippedFile], None],
    max_chunks_per_file: int,
) -> None:
    """Put a loaded document and its chunks into ``plan``, or skip it (over the cap, gone meanwhile)."""
    plan.metadata.pop(doc.source, None)
    if len(chunks) > max_chunks_per_file:
        skip(SkippedFile(
            path=doc.source, error="TooManyChunks",
            reason=f"more than {max_chunks_per_file} chunks, over max_chunks_per_file={max_chunks_per_file}; "
            "raise it (index(..., max_chunks_per_file=...)) to index this file whole",
        ))
        return
    longest = max((c.n_tokens for c in chunks), default=0)
    if longest > plan.settings.max_tokens:  # the encoder would cut it: a chunker with other settings than the index
        raise ConfigurationError(f"{doc.source}: a chunk of {longest} tokens, over the index's max_tokens="
                                 f"{plan.settings.max_tokens}; the chunker must be built with the index's settings")
    try:
        now = os.stat(doc.source)
    except OSError as exc:
        skip(SkippedFile(
            path=doc.source, error="FileAccessError",
            reason=f"deleted or moved while the batch was loading ({exc.strerror or exc}); index again to pick it up",
        ))
        return
    st = stat_before if stat_before is not None else now
    if (now.st_size, now.st_mtime) != (st.st_size, st.st_mtime):
        plan.warnings.append(FileWarning(
            path=doc.source, message="changed while it was being read: indexed as read; the next update reads it again",
        ))
    meta = wanted.get(doc.source)
    if meta is None:
        meta = old[doc.source].metadata if doc.source in old else {}
    chunks = [with_metadata(c, {}, meta) for c in chunks]
    plan.new_files[doc.source] = FileEntry(
        content_hash=doc.content_hash, document_id=doc.id, chunk_ids=[c.id for c in chunks],
        size=st.st_size, mtime=st.st_mtime, metadata=meta,
    )
    plan.new_chunks.extend(chunks)


def plan_deletion(paths: Iterable[str | os.PathLike[str]], *, manifest: Manifest) -> UpdatePlan:
    """A plan that drops the chunks of ``paths`` (files, or folders: everything under them)."""
    settings = Settings(manifest.model, manifest.max_tokens, manifest.overlap)
    plan = UpdatePlan(name=manifest.name, settings=settings, base_generation=manifest.generation)
    wanted = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
    remove: set[str] = set()
    for w in wanted:
        hits = [p for p in manifest.files if p == w or p.startswith(w.rstrip(os.sep) + os.sep)]
        if not hits:
            plan.skipped.append(SkippedFile(path=w, reason="not in the index", error="IndexNotFoundError"))
        remove.update(hits)
    plan.remove = sorted(remove)
    plan.unchanged = sorted(set(manifest.files) - remove)
    return plan


def _safe_hash(path: Path) -> str | None:
    try:
        return hash_file(path)
    except OSError:
        return None


def nothing_to_index(plan: UpdatePlan) -> NoDocumentsError:
    """The error for a plan that would create an index with nothing in it."""
    report = IndexReport(
        index_name=plan.name,
        skipped=plan.skipped,
        warnings=plan.warnings,
        ocr_pages=plan.ocr_pages,
        timings=plan.timings,
        chunks_written=0,
        chunks_total=0,
    )
    reasons = "; ".join(f"{s.path}: {s.reason}" for s in plan.skipped[:10]) or "no files given"
    return NoDocumentsError(f"nothing to index for {plan.name!r} ({reasons})", report=report)
