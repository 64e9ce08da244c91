"""Write leases: one writer per index across Modal containers and apps.

:class:`WriteLease` holds an index's entry in a shared :class:`LeaseStore`
(a ``modal.Dict`` in Modal; :class:`DirectoryLeases` in ``.local()`` runs and
tests). Used by :mod:`colbert_modal.remote.server`, which re-exports these
names; never imports modal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from ..errors import IndexLockedError

__all__ = ["LEASE_TTL", "DirectoryLeases", "LeaseStore", "WriteLease", "check_lease", "default_owner", "write_lease"]

logger = logging.getLogger(__name__)


#: Seconds a write lease lasts unless its holder renews it (it does, every
#: quarter of this, while it builds): a writer that crashed or was killed
#: (a Ctrl-C'd ephemeral run's containers) holds the index for at most this
#: long. Read when a lease is made (tests shorten it).
LEASE_TTL = 120.0
#: A holder commits only while its lease has at least this many seconds left, so a
#: writer that takes a lapsed lease over never races a commit of the old holder's.
COMMIT_MARGIN = 15.0


class LeaseStore(Protocol):
    """A shared mapping with an atomic put-if-absent; ``modal.Dict`` has these methods."""

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def get(self, key: Any, default: Any = None) -> Any: ...

    def pop(self, key: Any, default: Any = None) -> Any: ...


class DirectoryLeases:
    """A :class:`LeaseStore` in a directory, one JSON file per key.

    Put-if-absent links a complete file into place (``os.link`` fails if the
    name exists), so processes sharing the directory's filesystem see each
    other's leases. The store of ``.local()`` and ``inprocess`` runs; Modal
    containers use a ``modal.Dict`` (a Volume has no atomic create).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _file(self, key: Any) -> Path:
        return self.path / f"{quote(str(key), safe='')}.json"

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        tmp = self.path / f".{uuid.uuid4().hex}.tmp"
        for attempt in range(3):  # pop removes the folder once it is empty
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_text(json.dumps(value), encoding="utf-8")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            if not skip_if_exists:
                os.replace(tmp, self._file(key))
                return True
            try:
                os.link(tmp, self._file(key))
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return json.loads(self._file(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default

    def pop(self, key: Any, default: Any = None) -> Any:
        value = self.get(key, default)
        self._file(key).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()  # no lease left: leave no folder behind on the Volume directory
        return value


def default_owner() -> str:
    """Who holds a lease taken in this process, for the message another writer gets."""
    return f"process {os.getpid()} on {socket.gethostname()}"


class WriteLease:
    """The write lease of one index in a :class:`LeaseStore` shared by every writer.

    Entry ``<index name>``: the holder's token, a description of it
    (``owner``) and an expiry, renewed while held. A lease past its expiry
    is taken over; a store key ``<name>@<token of the lapsed lease>``, put
    if absent, decides which of several writers takes it. Only the holder's
    token releases it.
    """

    def __init__(
        self, leases: LeaseStore, name: str, *, owner: str | None = None, ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases, self.key, self.clock = leases, name, clock
        self.ttl = LEASE_TTL if ttl is None else ttl
        self.owner = owner or default_owner()
        self.token = uuid.uuid4().hex
        #: set by the renewer when another writer holds the entry: :meth:`check` then refuses
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _entry(self) -> dict[str, Any]:
        return {"token": self.token, "owner": self.owner, "expires": self.clock() + self.ttl}

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease: None if taken, else the entry of the writer holding it."""
        for _ in range(2):  # twice: the holder may release between put and get
            if self.leases.put(self.key, self._entry(), skip_if_exists=True):
                return None
            held = self.leases.get(self.key)
            if held is not None:
                break
        else:
            return {"owner": "another writer"}
        if held.get("expires", 0.0) > self.clock():
            return held
        takeover = f"{self.key}@{held.get('token')}"
        if not self.leases.put(takeover, self.token, skip_if_exists=True):
            return held  # another writer is taking it over
        try:
            logger.warning("taking over the lapsed write lease of index %r from %s", self.key, held.get("owner"))
            if (self.leases.get(self.key) or {}).get("token") == held.get("token"):
                self.leases.pop(self.key, None)
            if self.leases.put(self.key, self._entry(), skip_if_exists=True):
                return None
            return self.leases.get(self.key) or held
        finally:
            self.leases.pop(takeover, None)  # decided: a writer that read the lapsed entry late finds a live one

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; IndexLockedError if another writer holds it."""
        deadline = time.monotonic() + timeout
        while (held := self.try_acquire()) is not None:
            if time.monotonic() >= deadline:
                left = max(0, round(float(held.get("expires", 0.0)) - self.clock()))
                raise IndexLockedError(
                    f"another writer ({held.get('owner')}) is updating index {self.key!r}; "
                    f"try again when it is done (if that writer was stopped, its lease lapses in {left} s)"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if (self.leases.get(self.key) or {}).get("token") != self.token:
                    logger.warning("the write lease of index %r was lost; this writer will not commit", self.key)
                    self.lost = True
                    return
                self.leases.put(self.key, self._entry())
            except Exception as exc:  # the next round tries again
                logger.warning("renewing the write lease of index %r failed (%s)", self.key, exc)

    def check(self) -> None:
        """IndexLockedError unless this writer still holds the lease with :data:`COMMIT_MARGIN` to spare:
        call right before committing, so a writer whose lease lapsed or was taken over publishes nothing."""
        if not self.lost:
            check_lease(self.leases, self.key, self.token, clock=self.clock)
            return
        raise IndexLockedError(f"this writer lost the write lease of index {self.key!r}; nothing was committed")

    def release(self) -> None:
        """Give the lease up, if this writer still holds it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if (self.leases.get(self.key) or {}).get("token") == self.token:
            self.leases.pop(self.key, None)


def check_lease(leases: LeaseStore, name: str, token: str, *, clock: Callable[[], float] = time.time) -> None:
    """IndexLockedError unless the write lease of index ``name`` is ``token``'s with :data:`COMMIT_MARGIN`
    seconds left. A shard container checks its Writer's lease so before it commits: one whose Writer died
    (a timed-out parent; Modal may not stop its children) commits nothing once that lease can lapse."""
    held = leases.get(name) or {}
    if held.get("token") != token:
        raise IndexLockedError(
            f"the write lease of index {name!r} is no longer this build's (now: {held.get('owner') or 'nobody'}); "
            "nothing was committed"
        )
    if float(held.get("expires", 0.0)) - clock() < COMMIT_MARGIN:
        raise IndexLockedError(f"the write lease of index {name!r} is about to lapse; nothing was committed")


@contextlib.contextmanager
def write_lease(
    leases: LeaseStore | None, name: str, *, owner: str | None = None, timeout: float = 0.0
) -> Iterator[WriteLease | None]:
    """Hold index ``name``'s :class:`WriteLease` in ``leases`` (nothing if None); yields it.

    Writers in separate containers (two apps, two ``with_options`` variants)
    do not share a flock; this lease serialises them. Take it before the
    Volume reload, call its :meth:`~WriteLease.check` right before the
    Volume commit, and hold it past the commit.
    """
    if leases is None:
        yield None
        return
    lease = WriteLease(leases, name, owner=owner)
    lease.acquire(timeout)
    try:
        yield lease
    finally:
        lease.release()
