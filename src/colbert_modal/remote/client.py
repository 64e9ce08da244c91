"""The client half of remote mode: the Modal session, its calls and replies, error mapping.

Runs on your machine and never imports torch. Everything here takes what it
needs as arguments (plans, names, the session); the indexer's
:class:`~colbert_modal.runners.remote.RemoteRunner` plans updates and hands
them to :meth:`RemoteSession.apply`. How calls reach Modal (an ephemeral
app run, the deployed app, or the bodies in this process) is the session's
:class:`~colbert_modal.remote.transports.Transport`, picked once.
modal is imported inside functions only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigurationError, IndexNotFoundError, RemoteError
from ..keyword import combine_stats
from ..pipeline import UpdatePlan
from ..progress import Progress, Stage
from ..records import IndexInfo, IndexReport, RerankResult, SearchResults
from ..search import fuse, hybrid_depth
from ..sharding import ShardAnswer, merge_results
from ..store import Manifest
from . import KINDS, ApplyFinished, ContainerStarted, gpu_setting
from .connection import translated
from .transports import APP_RUN, Transport, transport_for
from .volumes import VolumeFiles

__all__ = ["APP_RUN", "CONNECTING", "RemoteSession", "gpu_options", "session_kind"]

logger = logging.getLogger(__name__)

#: The stage that starts (or joins) the app run; a first run builds the images in it.
CONNECTING = "connecting to Modal"


def session_kind(remote_app: str | None = None) -> str:
    """``remote_app``, else ``$COLBERT_MODAL_REMOTE_APP`` / ``$COLBERT_MODAL_DEPLOYED``, else ephemeral."""
    kind = remote_app or os.environ.get("COLBERT_MODAL_REMOTE_APP") or ""
    if not kind and os.environ.get("COLBERT_MODAL_DEPLOYED", "").strip().lower() in ("1", "true", "yes", "on"):
        kind = "deployed"
    kind = (kind or "ephemeral").strip().lower()
    if kind not in KINDS:
        raise ConfigurationError(f"COLBERT_MODAL_REMOTE_APP must be one of {KINDS}, got {kind!r}")
    return kind


class RemoteSession:
    """Handles on the Modal app for one indexer; :meth:`close` releases what the transport holds.

    Nothing is started until a call needs it: reading Volume files
    (``pull``/``push``) needs no app at all. The call that connects shows it
    as a "connecting to Modal" stage (a first ephemeral run builds the
    images: their steps show on it) where ``progress`` says so, as
    :class:`~colbert_modal.progress.Progress` takes it (None: where a person
    watches).
    """

    def __init__(
        self,
        kind: str = "ephemeral",
        *,
        gpu: str | None = None,
        timeout: float | None = None,
        verbose: bool = False,
        progress: bool | None = None,
    ) -> None:
        self.transport: Transport = transport_for(kind, verbose=verbose)
        self.kind = kind
        self.gpu = gpu
        self.timeout = timeout
        self.verbose = verbose
        #: Whether the app's start shows (``Progress(progress)``: None decides from the environment).
        self.progress = progress
        self.closed = False
        #: ``with_options`` of the build containers (Writer, ShardWriters) and of the Searchers
        self.build_options = gpu_options(gpu, self.transport.knows_app_settings, "Writer")
        if timeout:
            self.build_options["timeout"] = int(timeout)
        self.search_options = gpu_options(gpu, self.transport.knows_app_settings, "Searcher")
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: The newest generation this session published per index: searches ask for at least that one.
        self.written: dict[str, int] = {}
        #: Shard ids per index (None: unsharded), looked up once; dropped when this session writes the index.
        self._shard_ids: dict[str, list[str] | None] = {}

    def __repr__(self) -> str:
        return f"RemoteSession(kind={self.kind!r}, gpu={self.gpu!r}, closed={self.closed})"

    # --- connecting and handles -----------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")

    def start(self, progress: Progress | None = None) -> None:
        """Connect now rather than at the first call (an ephemeral run builds the images if needed).

        Shown as a "connecting to Modal" stage, with the image builds' steps,
        on ``progress`` (default: the session's own).
        """
        self._connect(progress=progress)

    def _connect(self, stage: Stage | None = None, *, progress: Progress | None = None) -> None:
        """Connect the transport once: on ``stage`` if the caller opened one, else on a stage of its own
        (on ``progress``, else ``Progress(self.progress)``) shown only where watched and only when
        connecting starts the app run."""
        self._check_open()
        with self._lock:
            if self.transport.connected:
                return
            starts_run = getattr(self.transport, "needs_start", False)
            if stage is None and starts_run:
                progress = progress if progress is not None else Progress(self.progress)
                if progress.watched:
                    try:
                        with progress.stage(CONNECTING, unit="step") as own:
                            self.transport.connect(own)
                    finally:
                        progress.close()
                    return
            self.transport.connect(stage)

    def _handle(self, name: str, *, cls: bool, options: dict[str, Any] | None = None) -> Any:
        self._connect()
        key = f"{name}:{sorted((options or {}).items())}"
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = self.transport.lookup(name, cls=cls)
                if options and not self.transport.runs_here:
                    handle = handle.with_options(**options)
                self._handles[key] = handle
            return handle

    def _writer(self) -> Any:
        return self._handle("Writer", cls=True, options=self.build_options)()

    def writer_timeout(self) -> float | None:
        """Seconds an index build may run: ``remote_timeout``, else the app's (unknown for a deployed app)."""
        if self.timeout:
            return int(self.timeout)
        if not self.transport.knows_app_settings:
            return None
        from .. import modal_app

        return modal_app.WRITER_TIMEOUT

    def call(self, fn: Any, *args: Any, what: str, limit: float | None = None, **kwargs: Any) -> Any:
        """One call of a Modal function or method, its errors translated (``limit``: its timeout, if known)."""
        self._check_open()
        with translated(what, limit=limit):
            return self.transport.call(fn, *args, **kwargs)

    def stream(self, fn: Any, *args: Any, what: str, limit: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """The items of a Modal generator method, its errors translated."""
        self._check_open()
        with translated(what, limit=limit):
            yield from self.transport.stream(fn, *args, **kwargs)

    # --- operations --------------------------------------------------------

    def call_function(self, name: str, *args: Any, what: str) -> Any:
        """One call of the app's function ``name`` (e.g. ``doctor``'s probes)."""
        return self.call(self._handle(name, cls=False), *args, what=what)

    def manifest(self, name: str) -> Manifest | None:
        data = self.call(self._handle("manifest", cls=False), name, what=f"reading the manifest of {name!r}")
        return Manifest.from_json(data) if data is not None else None

    def info(self, name: str) -> IndexInfo:
        return self.call(self._handle("info", cls=False), name, what=f"reading index {name!r}")

    def apply(
        self, plan: UpdatePlan, *, backend: str, lock_timeout: float, progress: Progress | None = None,
        shard_count: int = 1,
    ) -> IndexReport:
        """Apply ``plan`` on Modal, showing the remote stages on ``progress`` as the container reports them.

        Stages: connecting (starting the app run; a first run builds the
        images, which takes minutes: their steps show on the stage), the
        container start (until the container's first word), then the
        container's own (encoding in chunks, PLAID's, publishing, committing
        the Volume). An index of ``shard_count`` > 1 shards is built by the
        ``Coordinator`` (a CPU container mapping its shards over GPU
        ``ShardWriter`` s, with a timeout that covers their waves); others by
        the ``Writer``, whose plain ``apply`` is called where nobody watches.
        """
        kwargs = {"backend": backend, "lock_timeout": lock_timeout, "shard_options": self.build_options}
        if shard_count > 1:
            report = self._apply_streamed(plan, progress or Progress(False), kwargs, coordinated=shard_count)
        elif progress is None or not progress.watched:
            report = self.call(
                self._writer().apply, plan, what=f"indexing {plan.name!r}", limit=self.writer_timeout(), **kwargs
            )
        else:
            report = self._apply_streamed(plan, progress, kwargs)
        if report.changed:
            self._wrote(plan.name, plan.base_generation + 1)
        return report

    def _coordinator(self, shard_count: int) -> tuple[Any, float]:
        """The Coordinator of a sharded build, its timeout covering ``ceil(shards / MAX_GPUS)`` waves of shards."""
        from .. import modal_app
        from .server import coordinator_timeout

        shard_timeout = self.timeout or modal_app.WRITER_TIMEOUT
        limit = coordinator_timeout(shard_count, shard_timeout, modal_app.MAX_GPUS)
        return self._handle("Coordinator", cls=True, options={"timeout": limit})(), limit

    def _apply_streamed(
        self, plan: UpdatePlan, progress: Progress, kwargs: dict[str, Any], *, coordinated: int = 0
    ) -> IndexReport:
        """``apply_stream`` (the Writer's, or a sharded build's Coordinator's) read with ``.remote_gen()``,
        its stages replayed on ``progress``."""
        what = f"indexing {plan.name!r}"
        streamed: IndexReport | None = None

        def builder() -> tuple[Any, float | None]:
            return self._coordinator(coordinated) if coordinated else (self._writer(), self.writer_timeout())

        try:
            if self.transport.connected:
                worker, limit = builder()
            else:
                with progress.stage(CONNECTING, unit="step") as stage:
                    self._connect(stage)  # a first run builds the images: their steps are noted on the stage
                    worker, limit = builder()
            starting = progress.stage("starting the container", unit="step")
            for item in self.stream(worker.apply_stream, plan, what=what, limit=limit, **kwargs):
                if isinstance(item, ContainerStarted):
                    starting.close()
                elif isinstance(item, ApplyFinished):
                    streamed = item.report
                else:
                    progress.replay(item)
        finally:
            progress.close()
        if streamed is None:
            raise RemoteError(f"{what}: the Modal container ended without a report")
        return streamed

    def ocr_pages(self, jobs: list[Any]) -> list[Any]:
        """``modal_app.ocr_page`` mapped over ``jobs``: each page's OCR result, or the exception it raised."""
        self._check_open()
        with translated(f"OCR'ing {len(jobs)} scanned page(s)"):
            return self.transport.map(self._handle("ocr_page", cls=False), jobs)

    def adopt(self, name: str, upload: str) -> IndexInfo:
        info: IndexInfo = self.call(
            self._writer().adopt, name, upload, what=f"publishing the pushed index {name!r}", limit=self.writer_timeout()
        )
        self._wrote(name, info.generation)
        return info

    def drop(self, name: str) -> bool:
        """Delete index ``name`` from the Volume under its write lease; False if there was none."""
        found: bool = self.call(self._handle("delete", cls=False), name, what=f"deleting index {name!r}")
        self.written.pop(name, None)  # a new index of this name starts again at generation 1
        self._shard_ids.pop(name, None)
        return found

    def _wrote(self, name: str, generation: int) -> None:
        """This session published ``generation`` of ``name``: search at least that one, look its shards up again."""
        self.written[name] = max(self.written.get(name, 0), generation)
        self._shard_ids.pop(name, None)

    def shard_ids(self, name: str, *, fresh: bool = False) -> list[str] | None:
        """The shard ids of index ``name`` (None: unsharded), looked up once per session."""
        if fresh or name not in self._shard_ids:
            self._shard_ids[name] = self.call(
                self._handle("shards", cls=False), name, what=f"reading the shards of {name!r}"
            )
        return self._shard_ids[name]

    def search_batch(
        self, name: str, queries: list[str], k: int, where: dict[str, Any] | None = None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        shard_ids = self.shard_ids(name)
        if shard_ids:
            return self._search_shards(name, shard_ids, queries, k, where, mode, keyword_weight)
        how: dict[str, Any] = {"mode": mode, "keyword_weight": keyword_weight} if mode != "colbert" else {}
        searcher = self._handle("Searcher", cls=True, options=self.search_options)(index_name=name)
        results = self.call(
            searcher.search_batch, queries, k=k, min_generation=self.written.get(name), where=where, **how,
            what=f"searching {name!r}",
        )
        return [SearchResults(r, query=q) for q, r in zip(queries, results, strict=True)]

    def rerank(
        self, name: str, query: str, items: list[Any], k: int | None, *, model: str | None, max_tokens: int | None
    ) -> list[RerankResult]:
        """``items`` (checked ``reranking.Item`` s) scored in a warm Searcher of index ``name`` (a sharded
        index's first shard's); ``model``/``max_tokens`` None: the index's on the Volume, else the defaults."""
        shard_ids = self.shard_ids(name)
        handle = self._handle("Searcher", cls=True, options=self.search_options)
        searcher = handle(index_name=name, shard=shard_ids[0]) if shard_ids else handle(index_name=name)
        return list(self.call(
            searcher.rerank, query, items, k=k, model=model, max_tokens=max_tokens, what=f"reranking with {name!r}",
        ))

    def _search_shards(
        self, name: str, shard_ids: list[str], queries: list[str], k: int, where: dict[str, Any] | None,
        mode: str = "colbert", keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        """Every shard's Searcher (one warm container each) called at once; hits merged by score.

        All shards must answer from one generation of the index (see :class:`FanOut`). Keyword and
        hybrid modes ask twice: each shard's BM25 statistics, then its lists scored with their sum.
        """
        try:
            if mode == "colbert":
                return self._fan_out(name, shard_ids, queries, k, where, "colbert")[1]
            for _ in range(FanOut.ROUNDS):
                generation, stats = self._fan_out(name, shard_ids, queries, k, where, "stats")
                got, merged = self._fan_out(name, shard_ids, queries, k, where, mode, stats, generation)
                if got == generation:
                    return finish_parts(mode, merged, queries, k, keyword_weight)
        except _Unsharded:
            return self.search_batch(name, queries, k, where, mode=mode, keyword_weight=keyword_weight)
        raise FanOut(name, shard_ids, None).gave_up()

    def _fan_out(
        self, name: str, shard_ids: list[str], queries: list[str], k: int, where: dict[str, Any] | None, part: str,
        stats: list[Any] | None = None, target: int | None = None,
    ) -> tuple[int, Any]:
        """Each shard's ``part`` (:func:`~colbert_modal.search.search_part`) from one generation: (it, the
        parts combined by :func:`combine_parts`)."""
        from concurrent.futures import ThreadPoolExecutor

        searcher = self._handle("Searcher", cls=True, options=self.search_options)
        fan = FanOut(name, shard_ids, target or self.written.get(name))
        how: dict[str, Any] = {"mode": part, "stats": stats} if part != "colbert" else {}
        for _ in range(FanOut.ROUNDS):
            if fan.stale:
                fan.restart(self.shard_ids(name, fresh=True))
                if not fan.shard_ids:  # rebuilt unsharded
                    raise _Unsharded
            todo, target = fan.todo(), fan.target

            def ask(sid: str, target: int | None = target) -> ShardAnswer:
                return ShardAnswer(*self.call(
                    searcher(index_name=name, shard=sid).search_shard, queries, k=k, min_generation=target,
                    where=where, **how, what=f"searching shard {sid} of {name!r}",
                ))

            try:
                with ThreadPoolExecutor(max_workers=min(len(todo), 32), thread_name_prefix="shard-search") as pool:
                    merged = fan.answered(todo, list(pool.map(ask, todo)), queries, k, part)
            except IndexNotFoundError:
                fan.lost()
                continue
            if merged is not None:
                return fan.generation, merged
        raise fan.gave_up()

    # --- awaitable variants (the ``.aio`` methods): modal's own async calls, on the caller's loop ----------

    async def _connect_aio(self) -> None:
        """Connect in a worker thread, once per session (it may start the app run and build the images)."""
        self._check_open()
        if not self.transport.connected and not self.transport.runs_here:
            await asyncio.to_thread(self._connect)

    async def call_aio(self, fn: Any, *args: Any, what: str, limit: float | None = None, **kwargs: Any) -> Any:
        """:meth:`call` awaited: ``fn.remote.aio`` (cancelling the await abandons the call)."""
        self._check_open()
        with translated(what, limit=limit):
            return await self.transport.call_aio(fn, *args, **kwargs)

    async def info_aio(self, name: str) -> IndexInfo:
        await self._connect_aio()
        info: IndexInfo = await self.call_aio(self._handle("info", cls=False), name, what=f"reading index {name!r}")
        return info

    async def shard_ids_aio(self, name: str, *, fresh: bool = False) -> list[str] | None:
        if fresh or name not in self._shard_ids:
            await self._connect_aio()
            self._shard_ids[name] = await self.call_aio(
                self._handle("shards", cls=False), name, what=f"reading the shards of {name!r}"
            )
        return self._shard_ids[name]

    async def search_batch_aio(
        self, name: str, queries: list[str], k: int, where: dict[str, Any] | None = None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        """:meth:`search_batch` awaited; a sharded index's shards asked at once (``asyncio.gather``)."""
        shard_ids = await self.shard_ids_aio(name)
        if shard_ids:
            try:
                if mode == "colbert":
                    return (await self._fan_out_aio(name, shard_ids, queries, k, where, "colbert"))[1]
                for _ in range(FanOut.ROUNDS):
                    generation, stats = await self._fan_out_aio(name, shard_ids, queries, k, where, "stats")
                    got, merged = await self._fan_out_aio(name, shard_ids, queries, k, where, mode, stats, generation)
                    if got == generation:
                        return finish_parts(mode, merged, queries, k, keyword_weight)
                raise FanOut(name, shard_ids, None).gave_up()
            except _Unsharded:
                pass
        how: dict[str, Any] = {"mode": mode, "keyword_weight": keyword_weight} if mode != "colbert" else {}
        searcher = self._handle("Searcher", cls=True, options=self.search_options)(index_name=name)
        results = await self.call_aio(
            searcher.search_batch, queries, k=k, min_generation=self.written.get(name), where=where, **how,
            what=f"searching {name!r}",
        )
        return [SearchResults(r, query=q) for q, r in zip(queries, results, strict=True)]

    async def _fan_out_aio(
        self, name: str, shard_ids: list[str], queries: list[str], k: int, where: dict[str, Any] | None, part: str,
        stats: list[Any] | None = None, target: int | None = None,
    ) -> tuple[int, Any]:
        """As :meth:`_fan_out` (one generation for all shards), the shards awaited together."""
        searcher = self._handle("Searcher", cls=True, options=self.search_options)
        fan = FanOut(name, shard_ids, target or self.written.get(name))
        how: dict[str, Any] = {"mode": part, "stats": stats} if part != "colbert" else {}
        for _ in range(FanOut.ROUNDS):
            if fan.stale:
                fan.restart(await self.shard_ids_aio(name, fresh=True))
                if not fan.shard_ids:  # rebuilt unsharded
                    raise _Unsharded
            todo, target = fan.todo(), fan.target
            asks = [self.call_aio(
                searcher(index_name=name, shard=sid).search_shard, queries, k=k, min_generation=target,
                where=where, **how, what=f"searching shard {sid} of {name!r}",
            ) for sid in todo]
            try:
                merged = fan.answered(todo, [ShardAnswer(*a) for a in await asyncio.gather(*asks)], queries, k, part)
            except IndexNotFoundError:
                fan.lost()
                continue
            if merged is not None:
                return fan.generation, merged
        raise fan.gave_up()

    def volume(self) -> VolumeFiles:
        """The Volume's files, read and written from here (no app run needed)."""
        self._check_open()
        return self.transport.volume()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            self.transport.close()


class FanOut:
    """The rounds of a fan-out search of a sharded index, shared by the sync and async paths.

    All shards must answer from one generation of the index: a shard that
    served an older one is asked again for the newest seen (``target``); a
    shard count that changed (a rebuild) or a shard that vanished makes the
    caller look the shards up again (``stale``) and start over.
    """

    ROUNDS = 4

    def __init__(self, name: str, shard_ids: list[str], target: int | None) -> None:
        self.name = name
        self.shard_ids = shard_ids
        self.target = target
        self.answers: dict[str, ShardAnswer] = {}
        self.stale = False
        #: the generation every shard answered from (once :meth:`answered` returned the results)
        self.generation = 0

    def todo(self) -> list[str]:
        """The shards to ask this round: those not answered yet, or answered from before ``target``."""
        return [s for s in self.shard_ids if s not in self.answers or self.answers[s].generation < (self.target or 0)]

    def answered(self, todo: list[str], replies: list[ShardAnswer], queries: list[str], k: int,
                 part: str = "colbert") -> Any:
        """Take this round's replies; the merged results (:func:`combine_parts`) once every shard
        answered from one generation (then :attr:`generation`), else None."""
        self.answers.update(zip(todo, replies, strict=True))
        generations = {a.generation for a in self.answers.values()}
        if {a.shard_count for a in self.answers.values()} != {len(self.shard_ids)}:
            self.lost()
            self.target = max(generations)
            return None
        if len(generations) == 1:
            self.generation = generations.pop()
            return combine_parts(part, [self.answers[s].results for s in self.shard_ids], queries, k)
        self.target = max(generations)
        return None

    def lost(self) -> None:
        """The shards are not what was looked up (a rebuild): look them up again."""
        self.answers.clear()
        self.stale = True

    def restart(self, shard_ids: list[str] | None) -> None:
        self.shard_ids, self.stale = shard_ids or [], False

    def gave_up(self) -> RemoteError:
        return RemoteError(f"searching {self.name!r}: its shards kept answering from different generations "
                           "(it is being rewritten); try again")


class _Unsharded(Exception):
    """The index was rebuilt unsharded during a fan-out: search it whole."""


def combine_parts(part: str, per_shard: list[list[Any]], queries: list[str], k: int) -> Any:
    """The shards' answers for one ``part`` (:func:`~colbert_modal.search.search_part`), merged: ``"stats"``
    summed; ``"colbert"``/``"keyword"`` lists merged to the best ``k``; ``"hybrid"``: (ColBERT lists,
    BM25 lists), each merged to :func:`~colbert_modal.search.hybrid_depth`."""
    n = len(queries)
    if part == "stats":
        return combine_stats(per_shard, n)
    if part == "hybrid":
        depth = hybrid_depth(k)
        return ([merge_results([r[i] for r in per_shard], depth, q) for i, q in enumerate(queries)],
                [merge_results([r[n + i] for r in per_shard], depth, q) for i, q in enumerate(queries)])
    return [merge_results([r[i] for r in per_shard], k, q) for i, q in enumerate(queries)]


def finish_parts(mode: str, merged: Any, queries: list[str], k: int, keyword_weight: float) -> list[SearchResults]:
    """The final lists of a keyword or hybrid fan-out (hybrid: the merged rankings fused)."""
    if mode == "hybrid":
        colbert, keyword = merged
        return [fuse(c, w, k, keyword_weight, q) for q, c, w in zip(queries, colbert, keyword, strict=True)]
    return list(merged)


def gpu_options(gpu: str | None, knows_app_settings: bool, role: str) -> dict[str, Any]:
    """``with_options`` arguments for a per-indexer ``gpu`` (same syntax as ``$COLBERT_MODAL_GPU``).

    ``with_options`` takes one GPU type and cannot remove a GPU: a fallback list
    or ``"cpu"`` is accepted only where the app already uses it for ``role``.
    """
    if gpu is None or not gpu.strip():
        return {}
    wanted = gpu_setting(gpu, None)
    if isinstance(wanted, str):
        return {"gpu": wanted}
    if knows_app_settings:  # the app is this process's modal_app (not a deployed one)
        from .. import modal_app

        if wanted == (modal_app.GPU if role == "Writer" else modal_app.SEARCH_GPU):
            return {}
    what = "no GPU" if wanted is None else f"the fallback list {wanted}"
    raise ConfigurationError(
        f"gpu={gpu!r} asks for {what}, but a per-indexer gpu can only name one GPU type (Modal's "
        "with_options neither takes a list nor removes a GPU). Set COLBERT_MODAL_GPU (and "
        "COLBERT_MODAL_SEARCH_GPU) instead: in this process before the first remote call for ephemeral "
        "runs, at `colbert-modal deploy` for the deployed app."
    )

