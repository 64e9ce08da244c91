"""The container half of remote mode: apply a plan, adopt an upload, serve searches.

Runs inside the Modal containers defined in :mod:`colbert_modal.modal_app`
(or in this process through ``.local()``). It uses the same pipeline, store,
search and engine code as local mode; only the index root differs (the
Volume's mount path). Never imports modal: the Volume's reload and commit
hooks are passed in by ``modal_app``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..chunking import Chunker, load_tokenizer
from ..errors import IndexNotFoundError
from ..filters import parse_where
from ..keyword import check_mode
from ..pipeline import Settings, UpdatePlan, plan_update
from ..progress import Event, Progress, StageAdvanced, StageEnded, StageStarted
from ..records import IndexInfo, IndexReport, RerankResult, SearchResults
from ..search import LiveIndex, OpenGeneration, OpenIndex, check_queries, search_part
from ..sharding import (
    OpenShard,
    OpenShards,
    ShardBuilder,
    ShardJob,
    ShardResult,
    adopt_shards,
    build_shard,
    shard_generation,
)
from ..sharding import apply as apply_sharded
from ..store import Generation, IndexStore, load_generation
from . import VOLUME_MOUNT, ApplyFinished, ApplyItem, ContainerStarted
from .leases import LEASE_TTL, DirectoryLeases, LeaseStore, WriteLease, check_lease, default_owner, write_lease

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "LEASE_TTL",
    "MAX_FUNCTION_TIMEOUT",
    "DirectoryLeases",
    "IndexServer",
    "LeaseStore",
    "VolumeIndexStore",
    "WriteLease",
    "adopt_upload",
    "apply_plan",
    "build_shard_job",
    "check_lease",
    "container_model",
    "coordinator_timeout",
    "default_owner",
    "delete_index",
    "engine_factory",
    "read_info",
    "read_manifest",
    "read_shards",
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


#: Modal's longest function timeout (24 hours).
MAX_FUNCTION_TIMEOUT = 24 * 3600
#: Seconds a sharded build's Coordinator needs besides its shards' waves (planning, reloads, publishing).
COORDINATOR_SLACK = 600


def coordinator_timeout(shards: int, shard_timeout: float, max_gpus: int) -> int:
    """The timeout a sharded build's coordinator needs: ``ceil(shards / max_gpus)`` waves of ShardWriters,
    each up to ``shard_timeout``, plus :data:`COORDINATOR_SLACK`; at most Modal's :data:`MAX_FUNCTION_TIMEOUT`."""
    waves = -(-max(1, shards) // max(1, max_gpus))
    return int(min(MAX_FUNCTION_TIMEOUT, waves * shard_timeout + COORDINATOR_SLACK))


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


def read_shards(root: str | os.PathLike[str], name: str) -> list[str] | None:
    """The shard ids of index ``name`` (None: unsharded); IndexNotFoundError without an index."""
    shards = IndexStore(root, name).current().manifest.shards
    return sorted(shards) if shards is not None else None


def build_shard_job(
    root: str | os.PathLike[str], job: ShardJob, *, before_commit: Callable[[], None] | None = None
) -> ShardResult:
    """Build one shard of a sharded update (the body of a shard container), under ``root``.

    ``before_commit`` (the Writer's lease check) runs after the build; if it raises, the sealed
    generation is removed again, so this container has nothing of the build left to commit (a
    later ``reload()`` of the warm container may commit what it holds)."""
    import dataclasses

    try:
        result = build_shard(dataclasses.replace(job, index_root=str(root)), engine_factory=engine_factory())
        if before_commit is not None:
            try:
                before_commit()
            except BaseException:
                if result.generation is not None:
                    shutil.rmtree(IndexStore(root, job.index).path / "shards" / job.shard / "generations"
                                  / result.generation, ignore_errors=True)
                raise
        return result
    except Exception as exc:
        exc.shard = job.shard  # type: ignore[attr-defined]  # travels back with the exception
        raise


class VolumeIndexStore(IndexStore):
    """An index on a Modal Volume, written by a container that holds its write lease: :meth:`lock` keeps
    no ``LOCK`` file open (a flock serialises nothing across containers, and ``Volume.reload()`` refuses
    while a file of the Volume is open)."""

    lock_file = False


def apply_plan(
    root: str | os.PathLike[str],
    plan: UpdatePlan,
    *,
    backend: str = "auto",
    lock_timeout: float = 0.0,
    progress: Progress | None = None,
    build_shards: ShardBuilder | None = None,
    reload: Callable[[], None] | None = None,
    commit: Callable[[], None] | None = None,
) -> IndexReport:
    """Carry out ``plan`` on the index under ``root``: the local-mode engine code, under the index lock.

    ``apply_update`` checks ``plan.base_generation`` against what is
    published (optimistic concurrency) and publishes the new generation
    atomically, so readers never see a half-written index. A sharded
    index's shards are built by ``build_shards`` (Modal: one container per
    shard; default: here, in turn), see :func:`colbert_modal.sharding.apply`.
    ``reload``/``commit`` (the Volume's, in a Modal container holding the
    write lease): a sharded update commits its pruning before the shard
    containers start and reloads to see their generations before it
    publishes the top generation.
    """
    store = (IndexStore if reload is None else VolumeIndexStore)(root, plan.name)
    with store.lock(lock_timeout):
        return apply_sharded(store, plan, engine_factory=engine_factory(), backend=backend, progress=progress,
                             build_shards=build_shards, before_shards=commit, before_publish=reload)


#: The first item :func:`stream_apply` yields: the container has started.
STARTED = ContainerStarted()


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
    build_shards: ShardBuilder | None = None,
) -> Iterator[ApplyItem]:
    """:func:`apply_plan` as a stream: progress :data:`~colbert_modal.progress.Event` s, then the report.

    The body of a Modal generator method: the client iterates it with
    ``.remote_gen()`` (or ``.local()``) and replays the events on its own
    bars. Yields :data:`STARTED` first, then the stages of the build
    (encoding in chunks, PLAID's, publishing) as they happen, then
    a "committing" stage around ``commit`` (the Volume commit), and last
    :class:`~colbert_modal.remote.ApplyFinished` with the report. An error in the build is raised here, after the events
    that came before it. With ``leases``, the index's :func:`write_lease` is
    held from before ``reload`` until after ``commit``.
    """
    yield STARTED
    events: queue.Queue[Event | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            progress = Progress(False, sink=events.put, log=False)  # the client logs what it replays
            outcome["report"] = apply_plan(root, plan, backend=backend, lock_timeout=lock_timeout, progress=progress,
                                           build_shards=build_shards, reload=reload, commit=commit)
        except BaseException as exc:  # re-raised in the generator below
            outcome["error"] = exc
        finally:
            events.put(None)

    with write_lease(leases, plan.name, owner=owner, timeout=lock_timeout) as lease:
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
            _commit_leftovers(lease, commit)
            raise outcome["error"]
        if commit is not None:
            yield StageStarted("committing", None, "step")
            if lease is not None:
                lease.check()  # a writer whose lease lapsed or was taken over publishes nothing
            commit()
            yield StageEnded("committing")
    yield ApplyFinished(outcome["report"])


def _commit_leftovers(lease: WriteLease | None, commit: Callable[[], None] | None) -> None:
    """After a failed build, commit what it changed (its pruning, builds the next writer removes) while the
    lease is still held: a warm container's next ``reload()`` would otherwise publish those changes later,
    when they may be stale (Modal may commit a container's changes at any reload)."""
    if commit is None:
        return
    try:
        if lease is not None:
            lease.check()
        commit()
    except Exception as exc:
        logger.warning("committing a failed build's leftovers failed (%s: %s)", type(exc).__name__, exc)


def _merge_updates(event: Event, events: queue.Queue[Event | None]) -> Event:
    """``event``, with the advances of the same stage already queued behind it added in."""
    if not isinstance(event, StageAdvanced):
        return event
    n = event.n
    while True:
        try:
            nxt = events.queue[0]  # peek: the worker only appends
        except IndexError:
            break
        if not isinstance(nxt, StageAdvanced) or nxt.stage != event.stage:
            break
        events.get_nowait()
        n += nxt.n
    return StageAdvanced(event.stage, n)


def delete_index(root: str | os.PathLike[str], name: str) -> bool:
    """Remove index ``name`` under ``root`` (False if there is none); call under its write lease."""
    store = IndexStore(root, name)
    if not store.path.exists():
        return False
    store.destroy()
    return True


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
        # a sharded index: push uploaded each shard's generation to <upload>/shards/<id>
        adopt_shards(store, staging, lambda sid, _gen, dest: os.replace(staging / "shards" / sid, dest))
        shutil.rmtree(staging / "shards", ignore_errors=True)
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
        shard: str | None = None,
    ) -> None:
        self.store = IndexStore(root, name)
        #: the one shard this server searches, of a sharded index (None: the whole index)
        self.shard = shard
        self._reload = reload
        if min_refresh_interval is None:
            min_refresh_interval = float(os.environ.get("COLBERT_MODAL_REFRESH_INTERVAL") or DEFAULT_REFRESH_INTERVAL)
        self.min_refresh_interval = min_refresh_interval
        self.verbose = verbose
        self._cache = Path(tempfile.mkdtemp(prefix=f"colbert-modal-{name}-"))
        self._live = LiveIndex(self.store, self._open_copy)
        self._checked_at = float("-inf")
        #: one refresh (reload + copy) or Volume read at a time: concurrent inputs (``@modal.concurrent``)
        #: share the container, and its ``Volume.reload()`` refuses while another input has a file open
        self._refreshing = threading.Lock()

    @property
    def loaded(self) -> OpenIndex | None:
        """The generation opened last (None before the first search)."""
        return self._live.loaded

    @property
    def generation(self) -> int | None:
        """The generation being served (None before an index is published)."""
        loaded = self._live.loaded
        return loaded.manifest.generation if loaded else None

    def load_model(self, model: str | None = None) -> None:
        """Load the model (the index's, or ``model``) so the first search is warm."""
        manifest = self._read_manifest() if model is None else None
        if model is None:
            if manifest is None:
                return
            model = manifest["model"]
        engine = engine_factory(self.verbose)(model)
        if manifest is not None and "plaid" not in str(manifest.get("backend")) and engine.query_encoder is not None:
            return  # an exact index: the lean query encoder is all its searches load (no ragatouille)
        engine.rag  # noqa: B018 - loads the checkpoint

    def _read_manifest(self) -> dict[str, Any] | None:
        """The published manifest, read off the Volume between refreshes: another input's reload refuses while
        this one has a Volume file open, and may replace what it reads (one read or reload at a time)."""
        with self._refreshing:
            return read_manifest(self.store.root, self.store.name)

    def refresh(self, *, force: bool = False, min_generation: int | None = None) -> bool:
        """Switch to the newest published generation; True if it changed.

        A failed Volume reload keeps the loaded generation, unless it is older than ``min_generation``
        (a client reading its own write): then the reload's error is raised, never an older answer."""
        with self._refreshing:
            now = time.monotonic()
            before = self._live.loaded
            if not force and before is not None and now - self._checked_at < self.min_refresh_interval:
                return False
            self._checked_at = now
            if self._reload is not None:
                try:
                    self._reload()
                except Exception as exc:
                    if min_generation is not None and (self.generation or 0) < min_generation:
                        raise
                    logger.warning("Volume reload failed (%s: %s); serving the loaded generation",
                                   type(exc).__name__, exc)
            return self._live.current() is not before

    def _copy(self, gen: Generation) -> Generation:
        """``gen`` copied to the same relative place under the container's cache (once)."""
        rel = gen.path.relative_to(self.store.path)
        dest = self._cache / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
            shutil.copytree(gen.path, tmp)
            os.replace(tmp, dest)
        return load_generation(dest)

    def _open_copy(self, gen_name: str) -> OpenIndex:
        top = self._copy(load_generation(self.store.generation_path(gen_name)))
        model = container_model(top.manifest.model)
        opened: OpenIndex
        if top.manifest.shards is None:
            opened = OpenGeneration(top, model=model, verbose=self.verbose)
        elif self.shard is None:  # the whole sharded index in this container (clients search shard by shard)
            published = load_generation(self.store.generation_path(gen_name))
            for sid in top.manifest.shards:
                part = shard_generation(published, sid)
                if part is not None:
                    self._copy(part)
            opened = OpenShards(top, model=model, verbose=self.verbose)
        else:
            if self.shard not in top.manifest.shards:
                raise IndexNotFoundError(
                    f"index {self.store.name!r} has no shard {self.shard!r} at generation {top.manifest.generation} "
                    f"(it has {len(top.manifest.shards)}: it was rebuilt); look its shards up again"
                )
            old = self._live.loaded
            part = shard_generation(load_generation(self.store.generation_path(gen_name)), self.shard)
            if part is None:
                opened = OpenShard(top, self.shard, None)
            elif isinstance(old, OpenShard) and old.opened is not None and old.opened.name == part.path.name:
                opened = OpenShard(top, self.shard, old.opened)  # the shard did not change: keep it loaded
            else:
                opened = OpenShard(top, self.shard, OpenGeneration(self._copy(part), model=model, verbose=self.verbose))
        self._drop_copies_except(opened)
        return opened

    def _drop_copies_except(self, opened: OpenIndex) -> None:
        """Remove the cached generations ``opened`` does not use."""
        keep = {self._cache / "generations" / opened.name}
        shards = opened.manifest.shards or {}
        for sid, v in shards.items():
            if v.get("generation"):
                keep.add(self._cache / "shards" / sid / "generations" / v["generation"])
        for pattern in ("generations/g*", "shards/*/generations/g*"):
            for p in self._cache.glob(pattern):
                if p not in keep:
                    shutil.rmtree(p, ignore_errors=True)

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, min_generation: int | None = None,
        where: Mapping[str, Any] | None = None, mode: str = "colbert", keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        """One result list per query. ``min_generation``: a client that has just published
        that generation reads its own write (the refresh interval is skipped). ``where``:
        rank only the matching chunks (the filter runs here, in the container). ``mode``,
        ``keyword_weight``: as :meth:`ColbertIndexer.search <colbert_modal.ColbertIndexer.search>` takes them."""
        return self.search(queries, k, min_generation=min_generation, where=where, mode=mode,
                           keyword_weight=keyword_weight)[1]

    def search(
        self, queries: Sequence[str], k: int = 10, *, min_generation: int | None = None,
        where: Mapping[str, Any] | None = None, mode: str = "colbert", keyword_weight: float = 1.0,
    ) -> tuple[int, list[SearchResults]]:
        """:meth:`search_batch`, with the generation the results come from (a sharded index's
        client checks that every shard answered from the same one)."""
        check_mode(mode, keyword_weight)
        opened, queries = self._ready(queries, k, min_generation, where)
        if not queries:
            return opened.manifest.generation, []
        return opened.manifest.generation, opened.search_batch(queries, k, where, mode=mode,
                                                               keyword_weight=keyword_weight)

    def search_part(
        self, queries: Sequence[str], k: int, *, part: str, stats: Sequence[Any] | None = None,
        min_generation: int | None = None, where: Mapping[str, Any] | None = None,
    ) -> tuple[int, list[Any]]:
        """One shard's ``part`` of a keyword or hybrid search (:func:`~colbert_modal.search.search_part`),
        with the generation it comes from."""
        opened, queries = self._ready(queries, k, min_generation, where)
        return opened.manifest.generation, search_part(opened, queries, k, where, part, stats) if queries else []

    def _ready(self, queries: Sequence[str], k: int, min_generation: int | None, where: Mapping[str, Any] | None,
               ) -> tuple[OpenIndex, list[str]]:
        """The generation to search (refreshed as :meth:`search` says) and the checked queries."""
        queries = check_queries(queries, k)
        parse_where(where)
        stale = min_generation is not None and (self.generation or 0) < min_generation
        self.refresh(force=stale, min_generation=min_generation if stale else None)
        opened = self._live.loaded
        assert opened is not None
        return opened, queries

    def rerank(
        self, query: str, items: Sequence[Any], k: int | None = None, *, model: str | None = None,
        max_tokens: int | None = None,
    ) -> list[RerankResult]:
        """``items`` (``reranking.Item`` s) scored for ``query`` with ``model``, else this index's model
        (else the default); ``max_tokens``, else the index's (else 256). Needs no index."""
        from ..chunking import DEFAULT_MAX_TOKENS
        from ..reranking import check_items, check_k, check_query, default_model, rerank_items

        query = check_query(query)
        checked, k = check_items([it._asdict() if hasattr(it, "_asdict") else it for it in items]), check_k(k)
        manifest = self._read_manifest() if model is None or max_tokens is None else None
        model = model or (manifest["model"] if manifest else default_model())
        max_tokens = max_tokens or (manifest["max_tokens"] if manifest else DEFAULT_MAX_TOKENS)
        return rerank_items(engine_factory(self.verbose)(model), query, checked, k, max_tokens=max_tokens)

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
