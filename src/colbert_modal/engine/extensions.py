"""colbert-ai's C++ extensions: compile them without waiting forever on a lock a dead process left.

colbert-ai compiles four small C++ extensions the first time they are used
(torch's ``cpp_extension.load``: ninja and a C++ compiler, 30-40 s each on 2
cores; nvcc for the CUDA ones). torch marks a compile in progress with a
file, ``<extensions dir>/<name>/lock``, and every other process waits for
that file to go away. A process killed during the compile leaves it behind,
and the next one waited forever, silently.

:func:`guarded` wraps ``load`` so that, before torch looks at its lock:

- each colbert_modal process holds an ``fcntl`` lock on
  ``<name>/colbert_modal.owner`` while it compiles (the kernel drops it
  when the process dies), so another colbert_modal process compiling there
  is waited for;
- a ``lock`` file still there once that owner lock is ours belongs to no
  colbert_modal process. Where no process has it open (torch's compiling
  process keeps it open) or works in that folder (ninja and the compiler
  run there), as Linux's ``/proc`` shows, and it is older than
  :data:`STALE_AFTER_S` seconds, its owner is gone: the file is removed,
  with a WARNING log line, and the load goes on. Without ``/proc`` the
  file must be older than :data:`STALE_AFTER_NO_PROC_S`. A live process
  compiling there (any program) is waited for;
- a compile about to run shows as a progress stage, "compiling <name>
  (first run, about N s)", where progress shows (see
  :func:`colbert_modal.progress.should_show`), and logs an INFO line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..progress import Progress

__all__ = [
    "COMPILE_SECONDS",
    "STALE_AFTER_NO_PROC_S",
    "STALE_AFTER_S",
    "build_directory",
    "clear_stale_lock",
    "guarded",
    "in_use",
]

logger = logging.getLogger(__name__)

#: A lock file this old that no process holds open or works beside is stale (seconds).
STALE_AFTER_S = 2.0
#: Where processes cannot be listed (no ``/proc``), a lock file this old is stale.
STALE_AFTER_NO_PROC_S = 900.0
#: Rough seconds one extension takes to compile: C++ only / with CUDA sources (nvcc).
COMPILE_SECONDS = {"cpu": 40, "cuda": 120}
#: Seconds between two looks at a lock file another process holds.
POLL_S = 0.5

_OWNER = "colbert_modal.owner"


def build_directory(name: str, build_dir: str | None = None) -> str:
    """The folder torch compiles extension ``name`` in (``$TORCH_EXTENSIONS_DIR/<name>`` or torch's default)."""
    if build_dir:
        return build_dir
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        import torch
        from torch.utils.cpp_extension import get_default_build_root

        cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
        accel = f"rocm{hip.replace('.', '')}" if hip else f"cu{cuda.replace('.', '')}" if cuda else "cpu"
        py = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{py}_{accel}")
    return os.path.join(root, name)


def in_use(folder: str) -> bool | None:
    """Whether a live process is compiling in ``folder``: it has ``folder/lock`` open (torch's
    compiling process holds it open) or ``folder`` as its working directory (ninja and the compiler).

    None where that cannot be known (no ``/proc``). Processes that cannot be
    inspected (another user's) are not counted.
    """
    proc = "/proc"
    if not os.path.isdir(os.path.join(proc, "self", "fd")):
        return None
    target = os.path.realpath(folder)
    lock = os.path.join(target, "lock")
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            cwd = os.readlink(os.path.join(proc, pid, "cwd"))
            if cwd == target or cwd.startswith(target + os.sep):
                return True
            fds = os.path.join(proc, pid, "fd")
            for fd in os.listdir(fds):
                with contextlib.suppress(OSError):
                    if os.readlink(os.path.join(fds, fd)) == lock:
                        return True
        except OSError:
            continue
    return False


def clear_stale_lock(folder: str, *, wait: bool = True, progress: Progress | None = None) -> bool:
    """Remove ``folder/lock`` where the process that made it is gone; True if one was removed.

    Call it holding the folder's owner lock (see :func:`guarded`). While a
    live process holds the lock file, waits for it to go (``wait``) or
    returns False at once.
    """
    lock = os.path.join(folder, "lock")
    stage = None
    try:
        while True:
            try:
                age = time.time() - os.stat(lock).st_mtime
            except FileNotFoundError:
                return False
            busy = in_use(folder)
            limit = STALE_AFTER_NO_PROC_S if busy is None else STALE_AFTER_S
            if not busy and age >= limit:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                logger.warning(
                    "removed a stale torch extension lock %s (%.0f s old; the process compiling there is gone)",
                    lock, age,
                )
                return True
            if not wait:
                return False
            if stage is None and busy is not False:
                stage = (progress or Progress(None)).stage(
                    f"waiting for another process compiling {os.path.basename(folder)}", unit="step"
                )
            time.sleep(POLL_S)
    finally:
        if stage is not None:
            stage.close()


@contextlib.contextmanager
def _owner_lock(folder: str) -> Iterator[None]:
    """This process's fcntl lock on ``folder/colbert_modal.owner`` (held while it compiles there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no owner lock, only the lock file's age
        yield
        return
    try:
        fd = os.open(os.path.join(folder, _OWNER), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # a read-only cache: torch only loads from it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with Progress(None).stage(
                f"waiting for another process compiling {os.path.basename(folder)}", unit="step"
            ):
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: fall back on the lock file's age
        yield
    finally:
        os.close(fd)  # drops the lock


def _built(folder: str, name: str) -> bool:
    try:
        return any(f.startswith(name) and f.endswith((".so", ".pyd")) for f in os.listdir(folder))
    except OSError:
        return False


#: One compile per extension folder at a time in this process (flock is per open file, not per thread).
_FOLDER_LOCKS: dict[str, threading.Lock] = {}
_FOLDER_LOCKS_LOCK = threading.Lock()


def _folder_lock(folder: str) -> threading.Lock:
    with _FOLDER_LOCKS_LOCK:
        return _FOLDER_LOCKS.setdefault(os.path.realpath(folder), threading.Lock())


def guarded(load: Callable[..., Any]) -> Callable[..., Any]:
    """torch's ``cpp_extension.load``, with the stale-lock guard and the "compiling" note (see the module)."""
    if getattr(load, "colbert_modal_guarded", False):
        return load

    def load_extension(name: str, sources: Any = (), *args: Any, **kwargs: Any) -> Any:
        folder = build_directory(name, kwargs.get("build_directory"))
        os.makedirs(folder, exist_ok=True)
        with _folder_lock(folder), _owner_lock(folder):
            clear_stale_lock(folder)
            if _built(folder, name):
                return load(name, sources, *args, **kwargs)
            srcs = [sources] if isinstance(sources, str) else list(sources)
            seconds = COMPILE_SECONDS["cuda" if any(str(s).endswith(".cu") for s in srcs) else "cpu"]
            logger.info("compiling colbert-ai's %s extension in %s (first run, about %d s)", name, folder, seconds)
            with Progress(None).stage(f"compiling {name} (first run, about {seconds} s)", unit="step"):
                return load(name, sources, *args, **kwargs)

    load_extension.colbert_modal_guarded = True  # type: ignore[attr-defined]
    load_extension.__wrapped__ = load  # type: ignore[attr-defined]
    return load_extension
