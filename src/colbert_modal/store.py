"""Where indexes live on disk, and how they change without ever breaking.

Layout of one index (``<index_root>/<name>/``)::

    LOCK                     held (flock) by the one process writing this index
    CURRENT                  names the published generation, e.g. "g000003"
    generations/g000003/     a complete, immutable index:
        manifest.json        settings + source path -> content hash -> chunk ids
        chunks.jsonl         one Chunk per line, in engine (pid) order
        keyword.sqlite       the chunks' BM25 index (SQLite FTS5; :mod:`.keyword`)
        engine/              what the engine wrote (exact embeddings or PLAID)
    generations/.g000004-*/  a build in progress (ignored; removed when stale)

A write builds a new generation aside, then publishes it by replacing
``CURRENT`` atomically (``os.replace``). Readers only ever see a complete
generation; an interrupted build (exception, Ctrl-C, kill -9) leaves the
previous one published and searchable. Old generations are removed after a
publish, except the one just replaced (a reader may still be using it); the
next writer also removes what a killed or failed writer left (builds,
unpublished generations, ``.CURRENT.<pid>.tmp`` files).

The manifest records a checksum of ``chunks.jsonl``, ``keyword.sqlite`` and of each engine file
(``checksums``, absent in indexes made before it); a generation is checked
against them before it is searched or built on
(:meth:`Generation.verified_chunks`), so a damaged index raises
:class:`~colbert_modal.errors.IndexStorageError` naming the file, never
serves wrong hits; a sharded index's top manifest is checked by
:mod:`~colbert_modal.integrity`. Only a manifest's file sizes and mtimes may
change after publish (:meth:`IndexStore.refresh_files`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import (
    IndexLockedError,
    IndexNotFoundError,
    IndexStorageError,
)
from .integrity import (
    REBUILD_HINT,
    damaged_error,
    file_checksum,
    generation_checksums,
    storage_error,
    top_checksum_problem,
    top_problem,
    with_checksum,
)
from .keyword import KEYWORD_FILE, build_keyword_file
from .names import (
    default_index_root,
    generation_name,
    generation_number,
    is_generation_name,
    is_plain_name,
    validate_index_name,
)
from .records import Chunk, IndexInfo, public_source

__all__ = [
    "FORMAT_VERSION",
    "REBUILD_HINT",
    "SHARDED_FORMAT",
    "FileEntry",
    "Generation",
    "IndexStore",
    "Manifest",
    "damaged_error",
    "default_index_root",
    "file_checksum",
    "generation_checksums",
    "generation_name",
    "generation_number",
    "list_indexes",
    "load_generation",
    "now_iso",
    "storage_error",
    "validate_index_name",
]

FORMAT_VERSION = 1
#: The format of a sharded index's top manifest (older releases cannot read one).
SHARDED_FORMAT = 2
logger = logging.getLogger(__name__)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class FileEntry:
    """What the index holds of one source file."""

    content_hash: str
    document_id: str
    chunk_ids: list[str]
    size: int = 0
    mtime: float = 0.0
    #: the user's metadata for the file (``index(..., metadata=...)``); absent in older manifests
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the shard holding the file's chunks (sharded indexes' top manifests only)
    shard: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as stored; empty metadata and no shard are left out, so older releases read the manifest."""
        data = dict(vars(self))
        if not data["metadata"]:
            del data["metadata"]
        if data["shard"] is None:
            del data["shard"]
        return data


@dataclass
class Manifest:
    """Settings an index was built with, and what it holds, file by file."""

    name: str
    model: str
    max_tokens: int
    overlap: int
    backend: str
    generation: int = 0
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    files: dict[str, FileEntry] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    #: "sha256:<hex>" of chunks.jsonl and each engine file (paths relative to
    #: the generation), written at publish; None in indexes made before them.
    checksums: dict[str, str] | None = None
    #: A sharded index's top manifest: shard id -> ``{"generation": its live generation
    #: (None: empty), "backend", "chunks"}`` (:mod:`colbert_modal.sharding`); else None.
    shards: dict[str, dict[str, Any]] | None = None
    #: The OCR engine that read the index's scanned pages (``ocr.engine_id``), None where none was OCR'd.
    ocr: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as stored (a sharded index's top manifest: with its checksum, see :mod:`.integrity`)."""
        data = {
            "format": self.format,
            "name": self.name,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "overlap": self.overlap,
            "backend": self.backend,
            "generation": self.generation,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "files": {p: e.to_json() for p, e in sorted(self.files.items())},
            **({"checksums": self.checksums} if self.checksums is not None else {}),
            **({"shards": dict(sorted(self.shards.items()))} if self.shards is not None else {}),
            **({"ocr": self.ocr} if self.ocr is not None else {}),
        }
        return with_checksum(data) if self.shards is not None else data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        files = {p: FileEntry(**e) for p, e in data.get("files", {}).items()}
        keys = ("name", "model", "max_tokens", "overlap", "backend", "generation", "created_at", "updated_at", "format",
                "checksums", "shards", "ocr")
        return cls(files=files, **{k: data[k] for k in keys if k in data})

    @property
    def shard_count(self) -> int:
        """How many shards the index has (1: unsharded)."""
        return len(self.shards) if self.shards else 1

    @property
    def n_chunks(self) -> int:
        return sum(len(e.chunk_ids) for e in self.files.values())

    def metadata_keys(self) -> dict[str, int]:
        """The user metadata keys in use, with the number of files that have each."""
        counts: dict[str, int] = {}
        for e in self.files.values():
            for key in e.metadata:
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Generation:
    """One published, immutable version of an index."""

    path: Path
    manifest: Manifest

    @property
    def engine_dir(self) -> Path:
        return self.path / "engine"

    def iter_chunks(self) -> Iterator[Chunk]:
        """The chunks, in engine order; raises IndexStorageError where chunks.jsonl is damaged."""
        path = self.path / "chunks.jsonl"
        try:
            with path.open(encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            yield Chunk.model_validate_json(line)
                        except ValueError as exc:  # pydantic's ValidationError is a ValueError
                            raise damaged_error(path, f"line {number} is not a chunk") from exc
        except (OSError, ValueError) as exc:
            if isinstance(exc, IndexStorageError):
                raise
            raise damaged_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc

    def chunks(self) -> list[Chunk]:
        return list(self.iter_chunks())

    def verified_chunks(self) -> list[Chunk]:
        """:meth:`chunks`, after checking this generation against its manifest.

        The chunk ids must be the manifest's, and where the manifest has
        :attr:`Manifest.checksums` (written at publish), chunks.jsonl and
        every engine file must match them. Raises IndexStorageError naming
        the first file that does not.
        """
        sums = self.manifest.checksums or {}
        for rel, expected in sorted(sums.items()):
            path = self.path / rel
            try:
                found = file_checksum(path)
            except OSError as exc:
                raise damaged_error(path, f"cannot be read ({exc.strerror or exc})") from exc
            if found != expected:
                raise damaged_error(path, "does not match the checksum written when it was published")
        chunks = self.chunks()
        want = [i for e in self.manifest.files.values() for i in e.chunk_ids]
        if len(chunks) != len(want) or {c.id for c in chunks} != set(want):
            raise damaged_error(
                self.path / "chunks.jsonl",
                f"holds {len(chunks)} chunks where manifest.json lists {len(want)} (or other ids)",
            )
        return chunks

    def info(self) -> IndexInfo:
        """What this generation holds, as :class:`~colbert_modal.records.IndexInfo`."""
        m = self.manifest
        return IndexInfo(
            name=m.name,
            path=str(self.path.parent.parent),
            model=m.model,
            max_tokens=m.max_tokens,
            overlap=m.overlap,
            backend=m.backend,
            documents=len(m.files),
            chunks=m.n_chunks,
            generation=m.generation,
            created_at=m.created_at,
            updated_at=m.updated_at,
            sources=sorted(public_source(p) for p in m.files),  # a text record by its id
            metadata_keys=m.metadata_keys(),
            shards=m.shard_count,
            shard_chunks={sid: int(v.get("chunks") or 0) for sid, v in (m.shards or {}).items()},
        )


def load_generation(path: Path) -> Generation:
    """The generation stored in directory ``path`` (its ``manifest.json`` read and checked)."""
    try:
        data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        manifest = Manifest.from_json(data)
        if not isinstance(manifest.files, dict) or not all(isinstance(e.chunk_ids, list) for e in manifest.files.values()):
            raise TypeError("malformed 'files'")
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        raise damaged_error(path / "manifest.json", f"is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(manifest.format, int) or manifest.format > SHARDED_FORMAT:
        raise IndexStorageError(f"index file {path / 'manifest.json'} has format {str(manifest.format)[:20]!r}, newer "
                                f"than this release of colbert_modal reads ({SHARDED_FORMAT}); upgrade colbert-modal")
    problem = top_checksum_problem(data)
    if problem is None and (manifest.shards is not None or manifest.format == SHARDED_FORMAT):
        problem = top_problem(manifest.files, manifest.shards)  # a sharded index's top manifest
    if problem is not None:
        raise damaged_error(path / "manifest.json", problem)
    return Generation(path, manifest)


def _write_json_atomic(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False))


class IndexStore:
    """The on-disk home of one named index."""

    #: False: :meth:`lock` keeps no ``LOCK`` file open (a writer that remote mode's write lease serialises).
    lock_file = True

    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        self.name = validate_index_name(name)
        self.root = Path(root).expanduser().absolute()
        self.path = self.root / name

    # --- reading ---------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / "CURRENT").is_file()

    def current(self) -> Generation:
        """The published generation. Raises IndexNotFoundError if there is none."""
        gen_name = self.current_generation_name()
        if gen_name is None:
            raise IndexNotFoundError(f"no index named {self.name!r} under {self.root} (build it with index() first)")
        return load_generation(self.generation_path(gen_name))

    def generation_path(self, gen_name: str) -> Path:
        """Where the generation called ``gen_name`` (e.g. "g000003") lives."""
        return self.path / "generations" / gen_name

    def current_generation_name(self) -> str | None:
        """What ``CURRENT`` names (e.g. "g000003"), None without one; IndexStorageError if damaged."""
        path = self.path / "CURRENT"
        try:
            name = path.read_bytes().decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except NotADirectoryError as exc:
            raise self._not_a_directory() from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise damaged_error(path, f"cannot be read ({exc})") from exc
        if not is_generation_name(name):
            raise damaged_error(path, f"does not name a generation ({name[:40]!r})")
        return name

    def _not_a_directory(self, doing: str = "cannot be read") -> IndexStorageError:
        bad = self.path if self.root.is_dir() else self.root
        return IndexStorageError(f"index root {self.root} {doing}: {bad} is not a directory; "
                                 "pass index_root= a folder, or set COLBERT_MODAL_INDEX_ROOT")

    def _current_or_none(self) -> str | None:
        try:
            return self.current_generation_name()
        except IndexStorageError:
            return None

    # --- writing ---------------------------------------------------------

    def _ensure_root(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "generations").mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".probe-", delete=True):
                pass
        except (NotADirectoryError, FileExistsError) as exc:
            raise self._not_a_directory("is not writable") from exc
        except OSError as exc:
            raise IndexStorageError(
                f"index root {self.root} is not writable ({exc.strerror or exc}); "
                "pass index_root= or set COLBERT_MODAL_INDEX_ROOT"
            ) from exc

    @contextlib.contextmanager
    def lock(self, timeout: float = 0.0) -> Iterator[None]:
        """Hold this index's write lock. Waits up to ``timeout`` seconds."""
        self._ensure_root()
        fh = (self.path / "LOCK").open("a+") if self.lock_file else None
        try:
            deadline = time.monotonic() + timeout
            while fh is not None:
                try:
                    _flock(fh)
                except OSError as exc:
                    if isinstance(exc, BlockingIOError) or exc.errno not in _NO_LOCKS:
                        if not isinstance(exc, BlockingIOError):
                            raise
                        if time.monotonic() >= deadline:
                            raise IndexLockedError(
                                f"index {self.name!r} is being written by another process "
                                f"(lock {self.path / 'LOCK'}); try again when it is done"
                            ) from None
                        time.sleep(0.1)
                        continue
                    # Some network filesystems have no flock: writers there are serialised another way.
                    logger.warning("no file locks on %s (%s); continuing without", self.path, exc)
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()}\n")
                fh.flush()
                break
            self._remove_stale_builds()
            yield
        finally:
            if fh is not None:
                with contextlib.suppress(OSError):
                    _funlock(fh)
                fh.close()

    def _remove_stale_builds(self) -> None:
        """Remove what interrupted writers left (we hold the lock): builds in
        progress, temporary files, and generations that are neither current
        nor the one kept for readers (the newest before it)."""
        gens = self.path / "generations"
        for p in gens.glob(".g*"):  # builds interrupted before publish
            shutil.rmtree(p, ignore_errors=True)
        for p in self.path.glob(".*.tmp"):  # .CURRENT.<pid>.tmp after a kill -9 or a full disk
            p.unlink(missing_ok=True)
        current = self._current_or_none()
        if current is not None and (gens / current).is_dir():
            older = [p.name for p in gens.iterdir() if is_generation_name(p.name) and p.name < current]
            self._prune(keep={current, max(older, default=None)})

    def next_generation_number(self) -> int:
        nums = [generation_number(p.name) for p in (self.path / "generations").iterdir() if is_generation_name(p.name)]
        return max(nums, default=0) + 1

    def new_build_dir(self, number: int) -> Path:
        """A scratch directory for generation ``number``; call under :meth:`lock`.

        The name is unique even across machines that share the index root
        (Modal containers on one Volume can have the same pid).
        """
        path = self.path / "generations" / f".{generation_name(number)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def staging_dir(self) -> Path:
        """A scratch directory to assemble a generation in before :meth:`adopt`; call under :meth:`lock`."""
        return self.new_build_dir(0)

    def adopt(self, directory: Path) -> Generation:
        """Publish a complete generation directory (``manifest.json``, ``chunks.jsonl``,
        ``engine/``) as this index's next generation; call under :meth:`lock`.

        The directory is moved (it must be on the index root's filesystem);
        its manifest is renamed and renumbered for this index.
        """
        manifest = load_generation(directory).manifest
        manifest.name = self.name
        manifest.generation = self.next_generation_number()
        build = self.new_build_dir(manifest.generation)
        build.rmdir()
        os.replace(directory, build)
        chunks = None if manifest.shards is not None else Generation(build, manifest).chunks()
        return self.publish(build, manifest, chunks)

    def seal(self, build_dir: Path, manifest: Manifest, chunks: Iterable[Chunk] | None) -> Generation:
        """Finish a build in ``build_dir`` as generation ``manifest.generation``, unpublished: write
        ``chunks.jsonl`` and ``keyword.sqlite`` (None: a sharded index's top generation has neither),
        checksums, the manifest."""
        manifest.updated_at = now_iso()
        if chunks is not None:
            texts = []
            with (build_dir / "chunks.jsonl").open("w", encoding="utf-8") as fh:
                for chunk in chunks:
                    fh.write(chunk.model_dump_json())
                    fh.write("\n")
                    texts.append(chunk.text)
            build_keyword_file(build_dir / KEYWORD_FILE, texts)  # the BM25 index of the same chunks (keyword.py)
            manifest.checksums = generation_checksums(build_dir)
        _write_json_atomic(build_dir / "manifest.json", manifest.to_json())
        final = self.generation_path(generation_name(manifest.generation))
        os.replace(build_dir, final)
        return Generation(final, manifest)

    def publish(self, build_dir: Path, manifest: Manifest, chunks: Iterable[Chunk] | None) -> Generation:
        """Finish a build in ``build_dir`` and make it the current generation: :meth:`seal`, then :meth:`make_current`."""
        return self.make_current(self.seal(build_dir, manifest, chunks))

    def make_current(self, sealed: Generation) -> Generation:
        """Publish a generation :meth:`seal` made: point ``CURRENT`` at it (atomically), prune older ones."""
        previous = self._current_or_none()
        try:
            _write_text_atomic(self.path / "CURRENT", sealed.path.name + "\n")
        except BaseException:
            shutil.rmtree(sealed.path, ignore_errors=True)  # never leave an unpublished generation behind
            raise
        self._prune(keep={sealed.path.name, previous})
        return sealed

    def refresh_files(self, generation: Generation, stats: dict[str, tuple[int, float]]) -> None:
        """Record new (size, mtime) of files whose content did not change, in
        ``generation``'s manifest (so the next update does not hash them
        again); call under :meth:`lock`. Only this metadata changes: the
        chunks and engine files, and their checksums, stay as published."""
        manifest = generation.manifest
        for path, (size, mtime) in stats.items():
            entry = manifest.files.get(path)
            if entry is not None:
                entry.size, entry.mtime = size, mtime
        _write_json_atomic(generation.path / "manifest.json", manifest.to_json())

    def _prune(self, keep: set[str | None]) -> None:
        for p in (self.path / "generations").iterdir():
            if is_generation_name(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        if (self.path / "shards").is_dir():
            self._prune_shards()

    def _prune_shards(self) -> None:
        """Remove shard generations no kept top generation names (a failed update's too) and shard builds."""
        live: set[tuple[str, str | None]] = set()
        for p in (self.path / "generations").iterdir():
            if is_generation_name(p.name):
                try:
                    shards = load_generation(p).manifest.shards or {}
                except IndexStorageError:
                    return  # a damaged top generation: keep every shard until a rebuild replaces it
                live.update((sid, v.get("generation")) for sid, v in shards.items())
        for shard in (self.path / "shards").iterdir():
            gens = shard / "generations"
            if not gens.is_dir():
                continue
            for p in gens.iterdir():
                if p.name.startswith(".g") or (is_generation_name(p.name) and (shard.name, p.name) not in live):
                    shutil.rmtree(p, ignore_errors=True)
            if not any(gens.iterdir()):
                shutil.rmtree(shard, ignore_errors=True)

    def destroy(self) -> None:
        """Delete the whole index (takes the lock first)."""
        if not self.path.exists():
            raise IndexNotFoundError(f"no index named {self.name!r} under {self.root}")
        with self.lock():
            (self.path / "CURRENT").unlink(missing_ok=True)
            shutil.rmtree(self.path / "generations", ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_indexes(root: str | os.PathLike[str]) -> list[str]:
    """Names of the published indexes under ``root``."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "CURRENT").is_file() and is_plain_name(p.name))


if sys.platform == "win32":  # pragma: no cover - Windows
    import msvcrt

    def _flock(fh: Any) -> None:
        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc

    def _funlock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:  # POSIX
    import fcntl

    def _flock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _funlock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
