"""Checksums of index files, the consistency of a sharded index's top manifest, and storage errors.

An ordinary generation's manifest records checksums of ``chunks.jsonl`` and
of each engine file (:func:`generation_checksums`). A sharded index's top
generation holds only ``manifest.json``; it records its own checksum under
:data:`CHECKSUM_KEY` (:func:`with_checksum`, whenever it is written): the
checksum of the manifest less that key and each file's ``size`` and ``mtime``
(the only values that change after publish). Top manifests written before
it (or rewritten by a release before it, which drops the key it does not
know) have none: they open on the consistency checks of :func:`top_problem`
alone (every file's shard exists, each shard's chunk count adds up), which
every top manifest must pass too.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import IndexStorageError
from .names import is_generation_name

__all__ = [
    "CHECKSUM_KEY",
    "DISK_FULL",
    "REBUILD_HINT",
    "damaged_error",
    "file_checksum",
    "generation_checksums",
    "manifest_digest",
    "storage_error",
    "top_checksum_problem",
    "top_problem",
    "with_checksum",
]

#: A published generation's directory name: "g" and six digits.
#: The key of a sharded index's top manifest that holds the manifest's own checksum.
CHECKSUM_KEY = "manifest_checksum"
_MUTABLE = ("size", "mtime")
#: What a damaged-index error tells the user to do.
REBUILD_HINT = "rebuild with index(..., rebuild=True) or `colbert-modal index --rebuild`"
#: The errnos of a full disk (or quota).
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def damaged_error(path: Path, problem: str) -> IndexStorageError:
    """The error for a damaged index file: names it and says how to repair the index."""
    return IndexStorageError(f"index file {path} is damaged: {problem}; {REBUILD_HINT}")


def storage_error(exc: OSError, what: str) -> IndexStorageError:
    """``exc`` (raised while ``what``) as an IndexStorageError that says what to do."""
    if exc.errno in DISK_FULL:
        return IndexStorageError(f"no space left on the device while {what}; free space and run it again "
                                 "(the published index is unchanged)")
    return IndexStorageError(f"{what} failed ({exc.strerror or exc}); the published index is unchanged")


def file_checksum(path: Path) -> str:
    """``"sha256:<hex>"`` of the file at ``path``."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def generation_checksums(path: Path) -> dict[str, str]:
    """Checksums of chunks.jsonl, keyword.sqlite (where there is one) and every engine file of the generation in ``path``."""
    keyword = [path / "keyword.sqlite"] if (path / "keyword.sqlite").is_file() else []  # the BM25 index (keyword.py)
    files = [path / "chunks.jsonl", *keyword, *sorted(p for p in (path / "engine").rglob("*") if p.is_file())]
    return {p.relative_to(path).as_posix(): file_checksum(p) for p in files}


def manifest_digest(data: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a manifest (as written to or read from JSON), less its
    :data:`CHECKSUM_KEY` and each file's size and mtime."""
    body = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    files = data.get("files")
    if isinstance(files, Mapping):
        body["files"] = {p: {k: v for k, v in e.items() if k not in _MUTABLE} if isinstance(e, Mapping) else e
                         for p, e in files.items()}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def with_checksum(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest ``data`` with its checksum under :data:`CHECKSUM_KEY`."""
    return {**data, CHECKSUM_KEY: manifest_digest(data)}


def top_checksum_problem(data: Mapping[str, Any]) -> str | None:
    """What is wrong with the manifest ``data`` by its :data:`CHECKSUM_KEY`; None if it
    matches, or if there is none (an ordinary generation, or a top one written before it)."""
    recorded = data.get(CHECKSUM_KEY)
    if recorded is None:
        return None
    if recorded != manifest_digest(data):
        return f"it does not match its {CHECKSUM_KEY}, written when it was published"
    return None


def top_problem(files: Mapping[str, Any], shards: object) -> str | None:
    """What does not add up in a sharded top manifest, or None.

    ``files``: path -> entry (with ``shard`` and ``chunk_ids``); ``shards``:
    the manifest's ``shards``. The shards must be ``s000``... with an entry
    each (a generation name or null, a chunk count); every file must name
    one of them, and each shard's count be the sum of its files' chunks.
    """
    if not isinstance(shards, dict) or not shards:
        return f"its 'shards' is {type(shards).__name__}, not an object of shard entries"
    n = len(shards)
    if set(shards) != {f"s{i:03d}" for i in range(n)}:
        return f"its {n} shards are not s000 to s{n - 1:03d}"
    for sid, entry in shards.items():
        if not isinstance(entry, dict):
            return f"the entry of shard {sid} is {type(entry).__name__}, not an object"
        gen, chunks = entry.get("generation"), entry.get("chunks")
        if gen is not None and not (isinstance(gen, str) and is_generation_name(gen)):
            return f"shard {sid} names no generation ({str(gen)[:20]!r})"
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 0 or (gen is None and chunks):
            return f"shard {sid} has a chunk count of {str(chunks)[:20]!r}"
    counts = dict.fromkeys(shards, 0)
    for path, entry in files.items():
        shard = entry.shard
        if not isinstance(shard, str) or shard not in counts:
            return f"file {path[-200:]!r} is in shard {str(shard)[:20]!r}, which the manifest does not list"
        counts[shard] += len(entry.chunk_ids)
    for sid, entry in shards.items():
        if counts[sid] != entry["chunks"]:
            return f"shard {sid} holds {entry['chunks']} chunks by its entry, {counts[sid]} by its files"
    return None
