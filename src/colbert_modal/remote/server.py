"""The container half of remote mode: apply a plan, adopt an upload, serve searches.

Runs inside the Modal containers defined in :mod:`colbert_modal.modal_app`
(or in this process through ``.local()``). It uses the same pipeline, store,
search and engine code as local mode; only the index root differs (the
Volume's mount path). Never imports modal: the Volume's reload and commit
hooks are passed in by ``modal_app``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from ..chunking import Chunker, load_tokenizer
from ..errors import IndexLockedError, IndexNotFoundError
from ..filters import parse_where
from ..models import IndexInfo, IndexReport, SearchResults
from ..pipeline import Settings, UpdatePlan, apply_update, plan_update
from ..progress import Event, Progress
from ..search import LiveIndex, OpenGeneration, check_queries
from ..store import IndexStore, load_generation
from . import VOLUME_MOUNT

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "LEASE_TTL",
    "DirectoryLeases",
    "IndexServer",
    "LeaseStore",
    "WriteLease",
    "adopt_upload",
    "apply_plan",
    "container_model",
    "engine_factory",
    "read_info",
    "read_manifest",
    "stream_apply",
    "volume_path",
    "warm_up",
    "write_lease",
]

logger = logging.getLogger(__name__)

#: Seconds a search container serves its loaded generation before it reloads
#: the Volume to look for a newer one (``$COLBERT_MODAL_REFRESH_INTERVAL``).
#: A reload costs more as the Volume's file count grows; a client that has
#: just written an index passes ``min_generation`` and reads its own write.
DEFAULT_REFRESH_INTERVAL = 5.0


def volume_path() -> Path:
    """The index root on the Volume: ``$COLBERT_MODAL_VOLUME_PATH``, else ``/indexes``.

    Read at call time inside the Modal bodies, so tests (and ``inprocess``
    sessions) can point it at a directory standing in for the Volume.
    """
    return Path(os.environ.get("COLBERT_MODAL_VOLUME_PATH") or VOLUME_MOUNT)


def container_model(model: str) -> str:
    """The checkpoint to load for ``model`` where this code runs.

    Inside the image, hub ids baked in at build time live under
    ``$COLBERT_MODAL_MODELS_DIR/<hub id>`` (pinned revision); those are used
    so a container never downloads weights. Anything else is given to the
    engine unchanged (a local checkpoint directory in ``.local()`` runs, or a
    hub id fetched from the hub at first use).
    """
    base = os.environ.get("COLBERT_MODAL_MODELS_DIR")
    if base:
        baked = Path(base) / model
        if (baked / "config.json").is_file():
            return str(baked)
    return model


def engine_factory(verbose: bool = False) -> Callable[[str], Any]:
    """``model -> engine`` for the container: hub ids load from the image's baked copy."""
    from ..engine import get_engine

    return lambda model: get_engine(container_model(model), verbose=verbose)


def read_manifest(root: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The published manifest of index ``name`` under ``root`` as JSON, or None."""
    store = IndexStore(root, name)
    if not store.exists():
        return None
    return store.current().manifest.to_json()


def read_info(root: str | os.PathLike[str], name: str) -> IndexInfo:
    return IndexStore(root, name).current().info()


#: Seconds a write lease lasts unless its holder renews it (it does, every
#: quarter of this, while it builds): a writer that crashed or was killed
#: holds the index for at most this long.
LEASE_TTL = 600.0


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
        self, leases: LeaseStore, name: str, *, owner: str | None = None, ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases, self.key, self.ttl, self.clock = leases, name, ttl, clock
        self.owner = owner or default_owner()
        self.token = uuid.uuid4().hex
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
        if not self.leases.put(f"{self.key}@{held.get('token')}", self.token, skip_if_exists=True):
            return held  # another writer is taking it over
        logger.warning("taking over the lapsed write lease of index %r from %s", self.key, held.get("owner"))
        if (self.leases.get(self.key) or {}).get("token") == held.get("token"):
            self.leases.pop(self.key, None)
        if self.leases.put(self.key, self._entry(), skip_if_exists=True):
            return None
        return self.leases.get(self.key) or held

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; IndexLockedError if another writer holds it."""
        deadline = time.monotonic() + timeout
        while (held := self.try_acquire()) is not None:
            if time.monotonic() >= deadline:
                raise IndexLockedError(
                    f"another writer ({held.get('owner')}) is updating index {self.key!r}; "
                    "try again when it is done"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if (self.leases.get(self.key) or {}).get("token") != self.token:
                    logger.warning("the write lease of index %r was lost", self.key)
                    return
                self.leases.put(self.key, self._entry())
            except Exception as exc:  # the next round tries again
                logger.warning("renewing the write lease of index %r failed (%s)", self.key, exc)

    def release(self) -> None:
        """Give the lease up, if this writer still holds it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if (self.leases.get(self.key) or {}).get("token") == self.token:
            self.leases.pop(self.key, None)


@contextlib.contextmanager
def write_lease(
    leases: LeaseStore | None, name: str, *, owner: str | None = None, timeout: float = 0.0
) -> Iterator[None]:
    """Hold index ``name``'s :class:`WriteLease` in ``leases`` (nothing if None).

    Writers in separate containers (two apps, two ``with_options`` variants)
    do not share a flock; this lease serialises them. Take it before the
    Volume reload and hold it past the Volume commit.
    """
    if leases is None:
        yield
        return
    lease = WriteLease(leases, name, owner=owner)
    lease.acquire(timeout)
    try:
        yield
    finally:
        lease.release()


def apply_plan(
    root: str | os.PathLike[str],
    plan: UpdatePlan,
    *,
    backend: str = "auto",
    lock_timeout: float = 0.0,
    progress: Progress | None = None,
) -> IndexReport:
    """Carry out ``plan`` on the index under ``root``: the local-mode engine code, under the index lock.

    ``apply_update`` checks ``plan.base_generation`` against what is
    published (optimistic concurrency) and publishes the new generation
    atomically, so readers never see a half-written index.
    """
    store = IndexStore(root, plan.name)
    with store.lock(lock_timeout):
        return apply_update(store, plan, engine_factory=engine_factory(), backend=backend, progress=progress)


#: The first item :func:`stream_apply` yields: the container has started.
STARTED: Event = ("started",)


def stream_apply(
    root: str | os.PathLike[str],
    plan: UpdatePlan,
    *,
    backend: str = "auto",
    lock_timeout: float = 0.0,
    reload: Callable[[], None] | None = None,
    commit: Callable[[], None] | None = None,
    leases: LeaseStore | None = None,
    owner: str | None = None,
) -> Iterator[Event]:
    """:func:`apply_plan` as a stream: progress :data:`~colbert_modal.progress.Event` s, then ``("result", report)``.

    The body of a Modal generator method: the client iterates it with
    ``.remote_gen()`` (or ``.local()``) and replays the events on its own
    bars. Yields :data:`STARTED` first, then the stages of the build
    (encoding in chunks, PLAID's, publishing) as they happen, then
    ``("stage", "committing")`` around ``commit`` (the Volume commit), and
    last the report. An error in the build is raised here, after the events
    that came before it. With ``leases``, the index's :func:`write_lease` is
    held from before ``reload`` until after ``commit``.
    """
    yield STARTED
    events: queue.Queue[Event | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            progress = Progress(False, sink=events.put, log=False)  # the client logs what it replays
            outcome["report"] = apply_plan(root, plan, backend=backend, lock_timeout=lock_timeout, progress=progress)
        except BaseException as exc:  # re-raised in the generator below
            outcome["error"] = exc
        finally:
            events.put(None)

    with write_lease(leases, plan.name, owner=owner, timeout=lock_timeout):
        if reload is not None:
            reload()
        worker = threading.Thread(target=work, name=f"apply-{plan.name}", daemon=True)
        worker.start()
        try:
            while (event := events.get()) is not None:
                yield _merge_updates(event, events)
        finally:
            worker.join()  # the lease outlives the build, even if the stream is closed early
        if "error" in outcome:
            raise outcome["error"]
        if commit is not None:
            yield ("start", "committing", None, "step")
            commit()
            yield ("end", "committing")
    yield ("result", outcome["report"])


def _merge_updates(event: Event, events: queue.Queue[Event | None]) -> Event:
    """``event``, with the ``update`` events of the same stage already queued behind it added in."""
    if event[0] != "update":
        return event
    n = event[2]
    while True:
        try:
            nxt = events.queue[0]  # peek: the worker only appends
        except IndexError:
            break
        if nxt is None or nxt[0] != "update" or nxt[1] != event[1]:
            break
        events.get_nowait()
        n += nxt[2]
    return ("update", event[1], n)


def adopt_upload(root: str | os.PathLike[str], name: str, upload: str) -> IndexInfo:
    """Publish a generation that ``push`` uploaded to ``<name>/uploads/<upload>``.

    Under the index lock: the upload becomes the next generation (numbered
    after whatever is there) and is published atomically.
    """
    store = IndexStore(root, name)
    staging = store.path / "uploads" / upload
    if not (staging / "manifest.json").is_file():
        raise IndexNotFoundError(f"upload {upload!r} of index {name!r} not found on the Volume")
    with store.lock():
        gen = store.adopt(staging)
        shutil.rmtree(store.path / "uploads", ignore_errors=True)
    return gen.info()


class IndexServer:
    """Serves searches of one index, noticing newly published generations.

    Each call to :meth:`refresh` re-reads ``CURRENT`` (after ``reload``, the
    Volume reload hook) and, if a newer generation was published, copies it
    to container-local disk and opens it there. Working from a copy keeps no
    file on the Volume open (``Volume.reload()`` refuses while files are
    open) and keeps the engine's small writes (PLAID's checkpoint path)
    off the Volume.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        *,
        reload: Callable[[], None] | None = None,
        min_refresh_interval: float | None = None,
        verbose: bool = False,
    ) -> None:
        self.store = IndexStore(root, name)
        self._reload = reload
        if min_refresh_interval is None:
            min_refresh_interval = float(os.environ.get("COLBERT_MODAL_REFRESH_INTERVAL") or DEFAULT_REFRESH_INTERVAL)
        self.min_refresh_interval = min_refresh_interval
        self.verbose = verbose
        self._cache = Path(tempfile.mkdtemp(prefix=f"colbert-modal-{name}-"))
        self._live = LiveIndex(self.store, self._open_copy)
        self._checked_at = float("-inf")

    @property
    def generation(self) -> int | None:
        """The generation being served (None before an index is published)."""
        loaded = self._live.loaded
        return loaded.manifest.generation if loaded else None

    def load_model(self, model: str | None = None) -> None:
        """Load the model (the index's, or ``model``) so the first search is warm."""
        if model is None:
            manifest = read_manifest(self.store.root, self.store.name)
            if manifest is None:
                return
            model = manifest["model"]
        engine_factory(self.verbose)(model).rag  # noqa: B018 - loads the checkpoint

    def refresh(self, *, force: bool = False) -> bool:
        """Switch to the newest published generation; True if it changed."""
        now = time.monotonic()
        before = self._live.loaded
        if not force and before is not None and now - self._checked_at < self.min_refresh_interval:
            return False
        self._checked_at = now
        if self._reload is not None:
            try:
                self._reload()
            except Exception as exc:  # keep serving what we have
                logger.warning("Volume reload failed (%s: %s); serving the loaded generation", type(exc).__name__, exc)
        return self._live.current() is not before

    def _open_copy(self, gen_name: str) -> OpenGeneration:
        dest = self._cache / gen_name
        if not dest.exists():
            tmp = self._cache / f".{gen_name}.{uuid.uuid4().hex[:8]}"
            shutil.copytree(self.store.generation_path(gen_name), tmp)
            os.replace(tmp, dest)
        gen = load_generation(dest)
        opened = OpenGeneration(gen, model=container_model(gen.manifest.model), verbose=self.verbose)
        old = self._live.loaded
        if old is not None and old.name != gen_name:
            shutil.rmtree(self._cache / old.name, ignore_errors=True)
        return opened

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, min_generation: int | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[SearchResults]:
        """One result list per query. ``min_generation``: a client that has just published
        that generation reads its own write (the refresh interval is skipped). ``where``:
        rank only the matching chunks (the filter runs here, in the container)."""
        queries = check_queries(queries, k)
        parse_where(where)
        stale = min_generation is not None and (self.generation or 0) < min_generation
        self.refresh(force=stale)
        if not queries:
            return []
        opened = self._live.loaded
        assert opened is not None
        return opened.search_batch(queries, k, where)

    def close(self) -> None:
        self._live.forget()
        shutil.rmtree(self._cache, ignore_errors=True)


#: A few sentences for :func:`warm_up`: enough token embeddings for PLAID's k-means.
_WARM_UP_TEXTS = [
    "ColBERT encodes every passage into one vector per token.",
    "Late interaction scores a query by summing maximum similarities.",
    "PLAID compresses token embeddings into centroids and residuals.",
    "Modal runs Python functions on GPUs in the cloud.",
    "A Volume keeps files between container runs.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Search engines rank documents by their relevance to a query.",
    "Chunking splits long documents into passages of bounded length.",
]


def warm_up(model: str, workdir: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Build and search a tiny PLAID and exact index with ``model`` (image build step).

    Loading the model and the first PLAID build/search compile colbert-ai's
    C++/CUDA extensions into ``$TORCH_EXTENSIONS_DIR``; doing it at image
    build time means a cold container spends no GPU time compiling.
    Returns the number of hits per backend (a smoke test of the image).
    """
    hits: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        base = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        docs = base / "warm-up-docs"
        docs.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(_WARM_UP_TEXTS):
            (docs / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
        settings = Settings(container_model(model), 64, 8)
        chunker = Chunker(load_tokenizer(settings.model), max_tokens=settings.max_tokens, overlap=settings.overlap)
        for backend in ("plaid", "exact"):
            root = base / f"warm-up-{backend}"
            plan = plan_update([docs], name="warm-up", settings=settings, manifest=None, chunker=chunker)
            apply_plan(root, plan, backend=backend)
            server = IndexServer(root, "warm-up")
            try:
                hits[backend] = len(server.search_batch(["late interaction search"], k=3)[0])
            finally:
                server.close()
    return hits
