"""Loading and chunking many files in worker processes, one file per task.

:func:`~colbert_modal.pipeline.plan_update` reads a big folder through
:func:`load_and_chunk` when :func:`worker_count` says it is worth it: every
worker process builds its own :class:`~colbert_modal.chunking.Chunker` from
plain settings (model, max_tokens, overlap), then reads one file at a time
and sends back what :func:`~colbert_modal.loaders.iter_documents` would have
yielded for it, with the document's chunks. The results come back in input
order, whatever order the workers finish in; every decision about them
(duplicates, ``max_chunks_per_file``, metadata) stays with the caller.

Each worker is a fresh interpreter (``python -c``, as the ``spawn`` start
method makes them, never ``fork``: tokenizers' threads do not survive it) that
talks pickles over its stdin/stdout and, unlike multiprocessing's ``spawn``
and ``forkserver``, never re-runs the caller's ``__main__``, so a script
without ``if __name__ == "__main__":`` works. A worker that dies while
reading a file (a pathological PDF that crashes the parser or exhausts
memory) turns that file into a :class:`SkippedFile` naming the cause; a
fresh worker takes its place and the batch goes on. So does a file that takes
longer than ``COLBERT_MODAL_LOAD_TIMEOUT`` seconds (default 600; ``0``: no
limit; a scanned file: per page OCR'd) is skipped: its worker is killed. Ctrl-C ends every worker before the
``KeyboardInterrupt`` propagates; a parent that dies any other way (SIGTERM,
SIGKILL) takes its workers with it (Linux: the kernel's parent-death signal;
elsewhere on POSIX: each worker watches its parent's pid).

``COLBERT_MODAL_LOAD_WORKERS`` sets the number of workers (``1``: everything
in the calling process); the default is the cores this process may use.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from . import errors, ocr
from .chunking import Chunker, load_tokenizer
from .errors import ColbertModalError, ConfigurationError, LoadError
from .loaders import Passwords, iter_documents, password_for
from .ocr import OcrSettings, PendingOcr
from .progress import Stage
from .records import Chunk, Document, FileWarning, SkippedFile

__all__ = [
    "DEFAULT_LOAD_TIMEOUT",
    "ENV_TIMEOUT",
    "ENV_WORKERS",
    "PARALLEL_MIN_FILES",
    "READER",
    "Loaded",
    "load_and_chunk",
    "load_batch",
    "load_timeout",
    "read_file",
    "serve",
    "usable_cores",
    "worker_count",
]

logger = logging.getLogger(__name__)

#: The environment variable that sets the number of loader processes (1: none).
ENV_WORKERS = "COLBERT_MODAL_LOAD_WORKERS"

#: The environment variable that sets how long a loader process may spend on one file (seconds; 0: no limit).
ENV_TIMEOUT = "COLBERT_MODAL_LOAD_TIMEOUT"

#: How long a loader process may spend on one file by default: generous (pypdf's own limits
#: end the worst PDFs tried within seconds), but a parser that hangs does not hang the batch.
DEFAULT_LOAD_TIMEOUT = 600.0

#: Fewer files than this load in the calling process: starting a worker costs
#: about a second (an interpreter, pydantic, tokenizers), as long as several files take to read.
PARALLEL_MIN_FILES = 16

#: How a worker reads one file: ``(path, password) -> items`` (Documents,
#: SkippedFiles, FileWarnings, as :func:`~colbert_modal.loaders.iter_documents`
#: yields them).
Reader = Callable[[Path, "str | None"], "list[Document | SkippedFile | FileWarning | PendingOcr]"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:  # pragma: no cover - affinity unreadable
            pass
    return max(1, os.cpu_count() or 1)


def worker_count(n_files: int, requested: int | None = None) -> int:
    """How many loader processes to use for ``n_files`` files (1: none, load in this process).

    ``requested`` (an argument) wins over ``$COLBERT_MODAL_LOAD_WORKERS``, which
    wins over :func:`usable_cores`. Under :data:`PARALLEL_MIN_FILES` files, or
    with one core, files load in this process; never more workers than files.
    """
    source = "workers="
    if requested is None:
        raw = os.environ.get(ENV_WORKERS, "").strip()
        if raw:
            source = ENV_WORKERS
            try:
                requested = int(raw)
            except ValueError:
                requested = 0
        else:
            requested = usable_cores()
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        shown = os.environ.get(ENV_WORKERS) if source == ENV_WORKERS else requested
        raise ConfigurationError(
            f"{source} must be a positive number of loader processes (1: load in this process), got {shown!r}"
        )
    if requested == 1 or n_files < PARALLEL_MIN_FILES:
        return 1
    return min(requested, n_files)


def load_timeout() -> float | None:
    """Seconds a loader process may spend on one file: ``$COLBERT_MODAL_LOAD_TIMEOUT``, else
    :data:`DEFAULT_LOAD_TIMEOUT` (None: no limit, where it says ``0``)."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_LOAD_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(f"{ENV_TIMEOUT} must be a number of seconds per file (0: no limit), got {raw!r}")
    return seconds or None


def read_file(
    path: Path, password: str | None, *, ocr: OcrSettings | None = None
) -> list[Document | SkippedFile | FileWarning | PendingOcr]:
    """What :func:`~colbert_modal.loaders.iter_documents` yields for one file (the default :data:`Reader`)."""
    return list(iter_documents([path], passwords=password, ocr=ocr))


#: The :data:`Reader` workers use unless told otherwise. It must be importable
#: by name (a worker imports it); tests put one here that kills its process.
READER: Reader = read_file


@dataclass
class Loaded:
    """One file's outcome: ``items`` as the loaders yield them, and the document's first chunks.

    ``chunks`` holds at most ``max_chunks + 1`` chunks (enough to tell that a
    file is over the cap), or None where the file did not load. The Document in
    ``items`` comes without its pages: its chunks carry the text.
    """

    items: list[Document | SkippedFile | FileWarning | PendingOcr]
    chunks: list[Chunk] | None


# --- what a loader process tells its parent (pickled over its stdout) ---------------------------


class WorkerReady(NamedTuple):
    """The process loaded its tokenizer and takes files."""


class WorkerFailed(NamedTuple):
    """The process cannot work at all (e.g. the tokenizer does not load): the batch fails with this."""

    error: str
    message: str


class FileDone(NamedTuple):
    """File number ``position`` of the batch is done: its outcome."""

    position: int
    loaded: Loaded


class StillReading(NamedTuple):
    """The process finished one more slow step of its file (a page OCR'd): its time limit starts again."""

    position: int


#: One message of a loader process.
WorkerMessage = WorkerReady | WorkerFailed | FileDone | StillReading


#: What a loader process runs first (``python -c``): ignore Ctrl-C (the parent
#: ends it), keep the results channel (stdout) away from stray prints, take the
#: parent's ``sys.path``, then serve. A fresh interpreter that never imports the
#: caller's ``__main__``: a script without ``if __name__ == "__main__":`` works.
_BOOT = (
    "import os, pickle, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "channel = os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "sys.path[:] = pickle.load(sys.stdin.buffer)\n"
    "from colbert_modal.loadpool import serve\n"
    "serve(sys.stdin.buffer, channel, parent=int(sys.argv[1]))\n"
)

#: How often a loader process looks whether its parent is still there (where the kernel does not tell it).
_WATCH_INTERVAL = 1.0


def _tie_to_parent(parent: int) -> None:
    """End this process as soon as process ``parent`` (the one that started it) is gone, however it ended.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``).
    Everywhere on POSIX: a thread sees the parent pid change (the process was
    re-parented) and exits. Both check first that the parent did not die
    before they were in place. (Linux sends the signal when the parent's
    *thread* that started the worker ends; :func:`load_and_chunk` ends its
    workers before it returns, in that thread.)
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watcher below remains
            pass
    if os.name != "posix":  # pragma: no cover - Windows does not re-parent; its workers end with their file
        return
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_WATCH_INTERVAL)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="colbert-modal-parent-watch").start()


def serve(inp: IO[bytes], out: IO[bytes], *, parent: int | None = None) -> None:
    """The loop of a loader process: build a Chunker, then read and chunk files until told to stop.

    Reads pickled ``(settings, max_chunks, reader)``, then tasks ``(index,
    path, password)`` (None: stop) from ``inp``; writes pickled replies to ``out``.
    ``parent``: the pid of the process that started this one: its death ends this one.
    """
    if parent is not None:
        _tie_to_parent(parent)
    settings, max_chunks, reader = pickle.load(inp)

    def send(msg: WorkerMessage) -> None:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    model, max_tokens, overlap = settings
    try:
        chunker = Chunker(load_tokenizer(model), max_tokens=max_tokens, overlap=overlap)
    except Exception as exc:
        send(WorkerFailed(type(exc).__name__, str(exc)))
        return
    send(WorkerReady())
    while True:
        try:
            task = pickle.load(inp)
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        index, path, password = task
        ocr.HEARTBEAT = lambda index=index: send(StillReading(index))
        try:
            items = reader(Path(path), password)
            chunks = None
            for i, item in enumerate(items):
                if isinstance(item, Document):
                    chunks = list(itertools.islice(chunker.chunk(item), max_chunks + 1))
                    items[i] = item.model_copy(update={"pages": []})
            send(FileDone(index, Loaded(items, chunks)))
        except LoadError as exc:  # a reader that raises instead of reporting
            send(FileDone(index, Loaded([_skip(path, type(exc).__name__, exc.reason)], None)))
        except Exception as exc:  # one file must not stop the batch
            reason = f"could not be read or chunked in a loader process ({type(exc).__name__}: {exc})"
            send(FileDone(index, Loaded([_skip(path, type(exc).__name__, reason)], None)))


def _skip(path: str, error: str, reason: str) -> SkippedFile:
    return SkippedFile(path=path, reason=reason, error=error)


def _death(path: str, returncode: int | None) -> SkippedFile:
    if returncode is not None and returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit code {returncode}"
    return _skip(
        path, "LoaderCrashed",
        f"the loader process died while reading this file ({how}); the file may be damaged or too big "
        "to read in memory: check it, repair or remove it, and index again",
    )


def _timed_out(path: str, seconds: float) -> SkippedFile:
    return _skip(
        path, "LoaderTimeout",
        f"reading this file took more than {seconds:g} s, so its loader process was ended; the file may make "
        f"its parser hang: check it, or give it longer with {ENV_TIMEOUT}=<seconds>",
    )


def _fatal(name: str, message: str) -> ColbertModalError:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ColbertModalError) and not issubclass(cls, LoadError):
        return cls(message)
    return ColbertModalError(
        f"a loader process could not start ({name}: {message}); set {ENV_WORKERS}=1 to load in this process"
    )


class _Worker:
    """One loader process (a fresh interpreter) and the thread that reads its replies into ``replies``."""

    def __init__(self, init: tuple[Any, ...], replies: queue.Queue[tuple[_Worker, WorkerMessage | None]]) -> None:
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self.ready = False
        self.held: tuple[int, str] | None = None  # the file it is reading: (index, path)
        self.since = 0.0  # when it was handed that file (time.monotonic())
        self.send(list(sys.path))
        self.send(init)
        threading.Thread(target=self._read, args=(replies,), daemon=True, name="colbert-modal-loader").start()

    def _read(self, replies: queue.Queue[tuple[_Worker, WorkerMessage | None]]) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                replies.put((self, pickle.load(self.proc.stdout)))
        except Exception:  # EOF: the process ended (or tore its last reply dying)
            replies.put((self, None))

    def send(self, obj: Any) -> bool:
        """Write one pickled message; False where the process is gone."""
        assert self.proc.stdin is not None
        try:
            pickle.dump(obj, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def stop(self, *, kill: bool = False) -> int:
        """End the process (a stop message if idle, else SIGTERM; ``kill``: SIGKILL); its return code."""
        if kill:
            self.proc.kill()
        elif self.held is None and self.proc.poll() is None:
            self.send(None)
        else:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a worker that ignores its stop message
            self.proc.kill()
            code = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return code


def load_and_chunk(
    files: Sequence[Path],
    passwords: Sequence[str | None],
    *,
    settings: tuple[str, int, int],
    workers: int,
    max_chunks: int,
    on_file: Callable[[Loaded], None] | None = None,
    reader: Reader | None = None,
    ocr: OcrSettings | None = None,
) -> list[Loaded]:
    """Load and chunk ``files`` in ``workers`` processes; the outcomes in the order of ``files``.

    ``passwords[i]`` is the password for ``files[i]`` (None: none).
    ``settings`` is ``(model, max_tokens, overlap)``, from which each worker
    builds its chunker. ``on_file`` is called in this process as each file
    finishes (in completion order), for progress. ``reader`` defaults to
    :data:`READER`; it must be importable by name. A file that takes a worker
    longer than :func:`load_timeout` is skipped (``LoaderTimeout``) and its
    worker killed. ``ocr``: how the reader OCRs scanned pages (in the workers). Raises the error of a worker that cannot build its chunker
    (e.g. ModelLoadError).
    """
    limit = load_timeout()
    base = reader if reader is not None else READER
    init = (settings, max_chunks, functools.partial(cast(Any, base), ocr=ocr) if ocr is not None else base)
    todo = list(enumerate(str(f) for f in files))
    todo.reverse()  # pop() from the end hands out files in input order
    results: list[Loaded | None] = [None] * len(files)
    replies: queue.Queue[tuple[_Worker, WorkerMessage | None]] = queue.Queue()
    live: set[_Worker] = set()

    def feed(worker: _Worker) -> None:
        if todo:
            index, path = todo.pop()
            worker.held, worker.since = (index, path), time.monotonic()
            if not worker.send((index, path, passwords[index])):  # it died between files: its reader says so
                worker.held = None
                todo.append((index, path))

    def finish(index: int, loaded: Loaded) -> None:
        results[index] = loaded
        for item in loaded.items:
            if isinstance(item, SkippedFile):
                logger.info("skipped %s: %s", item.path, item.reason)
        if on_file is not None:
            on_file(loaded)

    def expire() -> None:  # end the workers that have spent too long on their file
        if limit is None:
            return
        now = time.monotonic()
        for worker in [w for w in live if w.held is not None and now - w.since > limit]:
            live.discard(worker)
            index, path = worker.held or (0, "")
            worker.held = None
            worker.stop(kill=True)
            finish(index, Loaded([_timed_out(path, limit)], None))
            if todo:
                live.add(_Worker(init, replies))

    try:
        for _ in range(max(1, min(workers, len(files)))):
            live.add(_Worker(init, replies))
        while todo or any(w.held is not None for w in live):
            try:
                worker, msg = replies.get(timeout=0.5)  # a timeout, so that Ctrl-C gets through on every OS
            except queue.Empty:
                expire()
                continue
            if worker not in live:  # one ended for its time limit: what it still said is moot
                continue
            if msg is None:  # the process ended
                live.discard(worker)
                held, was_ready = worker.held, worker.ready
                worker.held = None
                code = worker.stop()
                if held is None and not was_ready:
                    raise _fatal("ProcessDied", f"exit code {code} before it read any file")
                if held is not None:
                    finish(held[0], Loaded([_death(held[1], code)], None))
                if todo:
                    live.add(_Worker(init, replies))  # a fresh worker for the rest
                continue
            if isinstance(msg, WorkerFailed):
                raise _fatal(msg.error, msg.message)
            if isinstance(msg, StillReading):  # a page OCR'd: the time limit starts again
                worker.since = time.monotonic()
                continue
            if isinstance(msg, WorkerReady):
                worker.ready = True
            else:
                worker.held = None
                finish(msg.position, msg.loaded)
            feed(worker)
            expire()
    finally:
        for worker in live:
            worker.stop()
    missing = [str(files[i]) for i, r in enumerate(results) if r is None]
    if missing:  # pragma: no cover - every file is either done or died with its worker
        raise ColbertModalError(f"loader processes lost {len(missing)} file(s), e.g. {missing[0]}")
    return [r for r in results if r is not None]


def load_batch(
    files: Sequence[Path], passwords: Passwords, *, settings: tuple[str, int, int], workers: int, max_chunks: int,
    stage: Stage, ocr: OcrSettings | None = None,
) -> tuple[list[Document | SkippedFile | FileWarning | PendingOcr], dict[str, list[Chunk]]]:
    """:func:`load_and_chunk` for a planner: the loaders' items in input order, and each document's chunks by path.

    ``passwords`` as :func:`~colbert_modal.loaders.iter_documents` takes them
    (resolved per file here: a mapping never travels). ``stage`` counts the
    files as they finish and notes the chunks made so far.
    """
    made_so_far = 0

    def on_file(loaded: Loaded) -> None:
        nonlocal made_so_far
        made_so_far += len(loaded.chunks or [])
        stage.update(1)
        stage.note(f"{made_so_far} chunks")

    try:
        outcomes = load_and_chunk(
            files, [password_for(f, passwords) for f in files],
            settings=settings, workers=workers, max_chunks=max_chunks, on_file=on_file, ocr=ocr,
        )
    except BaseException:
        stage.close()  # Ctrl-C or a worker that cannot start: the stage ends here
        raise
    items = [item for loaded in outcomes for item in loaded.items]
    made = {
        item.source: loaded.chunks or []
        for loaded in outcomes for item in loaded.items if isinstance(item, Document)
    }
    return items, made
