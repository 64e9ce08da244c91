"""Containers and their views of the Volumes: what makes the stand-in no kinder than Modal.

A *container* is what runs inputs: an instance of a class variant (``@enter``
once), or a warm slot of a function. Each has its own **view** of every
Volume it mounts: a private directory, a copy of the Volume's committed files
taken when the container starts and at each ``Volume.reload()``. The body
reads and writes that copy; nothing it writes is seen by anyone else until
``Volume.commit()`` publishes it, and nothing another container commits is
seen until this one reloads. Where the semantics come from (modal 1.6.4):

- ``modal/volume.py``, ``_Volume.commit``: "If successful, the changes made
  are now persisted in durable storage and available to other containers
  accessing the volume." -- commit publishes this view's changes: every path
  written since the view was taken (or last committed) and every path
  deleted, in one step; **last write wins per path** (a later commit of the
  same path replaces it; a deletion deletes what is committed at that path,
  a deleted folder with everything committed under it).
- ``_Volume.reload``: "Make latest committed state of volume available in
  the running container. [...] Any uncommitted changes to the volume, such
  as new or modified files, may implicitly be committed when reloading.
  Reloading will fail if there are open files for the volume." -- reload
  commits this view's changes, then replaces the view by a fresh copy of the
  committed files; it fails (``RuntimeError``, the message the client
  builds from Modal's "there are open files preventing the operation")
  while any file under this container's mount is open (``/proc/self/fd``).
- ``VolumeCommitResponse.skip_reload``: the stand-in answers True (a commit
  does not bring other containers' commits into this view; only reload
  does).
- Modal's guide ("Volumes", background commits) says attached Volumes are
  also committed in the background and at container shutdown; the stand-in
  does neither (a body that forgets ``commit()`` loses its writes here,
  which is the unkind side). A container that dies (``Kill``, a timeout)
  publishes nothing more, except what a ``Kill(at="mid-commit")`` lets
  through.

The bodies see ``modal.is_local()`` False and their Volume mount at the
view's directory (``colbert_modal.remote.server.volume_path`` answers it in
a container's threads; a thread a body starts belongs to its container).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Container", "ContainerKilled", "Kill", "View", "current_container", "install_patches"]


class ContainerKilled(BaseException):
    """Raised in the threads of a container the stand-in killed (a timeout, an injected :class:`Kill`)."""


@dataclass(frozen=True)
class Kill:
    """Inject with ``StandIn.inject(tag, Kill(...))``: the container running the call dies.

    ``at``: ``"commit"``: when the body first calls ``Volume.commit()``, before anything is published
    (the body ran; its work is lost); ``"mid-commit"``: after the first half of its changes (sorted by
    path) is published; ``"reload"``: at its first ``Volume.reload()`` (nothing of its own published).
    The input answers INTERNAL_FAILURE, as a crashed or preempted container does on Modal (modal's client
    retries such an input, in a new container, as often as it fails). ``"timeout"``: the call times out
    after ``seconds`` (whatever its function's timeout), answers TIMEOUT and its container dies.
    """

    at: str = "commit"
    seconds: float = 0.0


_local = threading.local()


def current_container() -> Container | None:
    """The container whose thread this is (None: the test process itself)."""
    return getattr(_local, "container", None)


@contextlib.contextmanager
def running_in(container: Container | None):
    before = current_container()
    _local.container = container
    if container is not None:
        container.threads.add(threading.get_ident())
    try:
        yield
    finally:
        if container is not None:
            container.threads.discard(threading.get_ident())
        _local.container = before


def _scan(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: ``("d",)`` for a folder, ``("f", size, mtime_ns, inode)`` for a file."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in dirnames:
            found[(base / d).relative_to(root).as_posix()] = ("d",)
        for f in filenames:
            try:
                st = (base / f).stat()
            except FileNotFoundError:
                continue
            found[(base / f).relative_to(root).as_posix()] = ("f", st.st_size, st.st_mtime_ns, st.st_ino)
    return found


class View:
    """One container's view of one Volume (see the module docstring)."""

    def __init__(self, committed: Path, path: Path, lock: threading.Lock) -> None:
        self.committed, self.path, self.lock = committed, path, lock
        self.base: dict[str, tuple] = {}
        self.take()

    def take(self) -> None:
        """Make the view a copy of the committed files, in place: a path committed before and after is there
        throughout (each file swapped in whole by ``os.replace``), only what is gone from the committed files
        vanishes. Modal swaps the view without emptying it first (a reader of the same container that opens
        a file the reload keeps finds it); what it does refuse is a reload while a file is open, which
        ``VolumeReload`` checks before calling this."""
        with self.lock:
            self.path.mkdir(parents=True, exist_ok=True)
            want = _scan(self.committed) if self.committed.is_dir() else {}
            have = _scan(self.path)
            for rel in sorted(have, reverse=True):  # children before their folders
                target = self.path / rel
                if rel not in want or want[rel][0] != have[rel][0] or target.is_symlink():
                    if have[rel][0] == "d" and not target.is_symlink():
                        shutil.rmtree(target, ignore_errors=True)
                    else:
                        target.unlink(missing_ok=True)
            for rel, st in sorted(want.items()):
                src, target = self.committed / rel, self.path / rel
                if st[0] == "d" and not src.is_symlink():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                tmp = target.with_name(f".{target.name}.standin-reload")
                if src.is_symlink():
                    tmp.unlink(missing_ok=True)
                    os.symlink(os.readlink(src), tmp)
                else:
                    try:
                        shutil.copy2(src, tmp)
                    except FileNotFoundError:  # removed from the committed files since the scan
                        target.unlink(missing_ok=True)
                        continue
                os.replace(tmp, target)
            self.base = _scan(self.path)

    def changes(self) -> list[tuple[str, str]]:
        """``(op, path)`` since the view was taken or committed: ``write``, ``mkdir``, ``delete``; sorted by path."""
        now = _scan(self.path)
        ops = [("delete", p) for p in self.base if p not in now]
        for p, st in now.items():
            if self.base.get(p) != st:
                ops.append(("mkdir" if st[0] == "d" else "write", p))
        return sorted(ops, key=lambda op: op[1])

    def publish(self, limit: int | None = None) -> int:
        """Publish this view's changes (the first ``limit`` of them); how many were published."""
        with self.lock:
            ops = self.changes()
            if limit is not None:
                ops = ops[:limit]
            for op, rel in ops:
                target = self.committed / rel
                if op == "delete":
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
                elif op == "mkdir":
                    if target.exists() and not target.is_dir():
                        target.unlink()
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    src = self.path / rel
                    if target.is_dir():
                        shutil.rmtree(target)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.standin-commit")
                    try:
                        shutil.copy2(src, tmp)
                    except FileNotFoundError:  # removed since the scan: nothing to publish
                        continue
                    os.replace(tmp, target)
            if limit is None:
                self.base = _scan(self.path)
            return len(ops)

    def open_files(self) -> list[str]:
        """Files under this view that some thread of the process has open."""
        prefix = str(self.path) + os.sep
        found = []
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/self/fd/{fd}")
                    if target.startswith(prefix):
                        found.append(target[len(prefix):])
        return sorted(found)


@dataclass(eq=False)
class Container:
    """One "container": its id, the Volume views it mounts, its threads, and whether it is dead."""

    id: int
    function_id: str
    #: mount path -> the Volume's name
    mounts: dict[str, str]
    views: dict[str, View] = field(default_factory=dict)  # by Volume name
    threads: set[int] = field(default_factory=set)
    dead: bool = False
    why: str = ""
    kill: Kill | None = None
    obj: Any = None  # the class instance (None for a function)
    busy: int = 0  # inputs running in it now
    enter_lock: threading.Lock = field(default_factory=threading.Lock)

    def view_at(self, mount_path: str) -> View | None:
        name = self.mounts.get(mount_path)
        return self.views.get(name) if name is not None else None

    def die(self, why: str) -> None:
        """Mark the container dead: from now on its Volume and Dict calls (and ``volume_path()``) raise
        :class:`ContainerKilled` in its threads, so nothing it does later is seen by anyone. Its threads are
        not stopped (an exception raised into a thread that is inside modal's client can break the client);
        they end at their next such call, or run to their end unseen."""
        if not self.dead:
            self.dead, self.why = True, why

    def check_alive(self) -> None:
        if self.dead:
            raise ContainerKilled(f"container {self.id} was killed ({self.why})")


_installed = threading.Lock()
_patched = False


def install_patches() -> None:
    """Once per process: threads inherit their container; ``modal.is_local()`` is False in a container;
    ``colbert_modal``'s ``volume_path()`` is the container's view; Volume reload/commit and Dict calls of a
    container carry its identity to the stand-in (one at a time) and are refused once it is dead."""
    global _patched
    with _installed:
        if _patched:
            return
        _patched = True
    import modal
    from modal._runtime import execution_context

    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        container = current_container()
        if container is not None:
            run = self.run

            def run_in_container() -> None:
                with running_in(container), contextlib.suppress(ContainerKilled):  # it dies with its container
                    run()

            self.run = run_in_container  # type: ignore[method-assign]
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]

    original_is_local = execution_context.is_local

    def is_local() -> bool:
        return current_container() is None and original_is_local()

    modal.is_local = is_local

    from colbert_modal.remote import VOLUME_MOUNT, server

    original_volume_path = server.volume_path

    def volume_path() -> Path:
        container = current_container()
        if container is not None:
            container.check_alive()
            view = container.view_at(VOLUME_MOUNT)
            if view is not None:
                return view.path
        return original_volume_path()

    volume_path.__doc__ = original_volume_path.__doc__
    server.volume_path = volume_path

    for cls, names in ((modal.Volume, ("reload", "commit")),
                       (modal.Dict, ("get", "put", "pop", "contains", "update", "len", "clear"))):
        for name in names:
            _wrap_method(cls, name)


#: Set while a container's Volume/Dict call is in flight (one at a time): the RPC handlers read it.
caller_lock = threading.Lock()
caller: list[Container | None] = [None]


def _wrap_method(cls: type, name: str) -> None:
    original = cls.__dict__[name]

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        container = current_container()
        bound = original.__get__(self, type(self))
        if container is None:
            return bound(*args, **kwargs)
        container.check_alive()
        with caller_lock:
            caller[0] = container
            try:
                return bound(*args, **kwargs)
            finally:
                caller[0] = None
                container.check_alive()

    method.__name__ = name
    setattr(cls, name, method)
