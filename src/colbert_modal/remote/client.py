"""The client half of remote mode: credentials, the Modal session, error mapping, pull/push.

Runs on your machine and never imports torch. Everything here takes what it
needs as arguments (plans, stores, the session); :class:`~colbert_modal.ColbertIndexer`
plans updates itself and hands them to :meth:`RemoteSession.apply`.
modal is imported inside functions only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import (
    ConfigurationError,
    IndexNotFoundError,
    RemoteError,
    RemoteUnavailableError,
)
from ..models import IndexInfo, IndexReport, SearchResults
from ..pipeline import UpdatePlan
from ..progress import Progress, Stage
from ..sharding import merge_results
from ..store import Manifest
from . import APP_NAME, KINDS, VOLUME_NAME, gpu_setting
from .build_log import build_error, watching
from .connection import check_credentials, probe_server, translate_error, translated
from .server import volume_path
from .volumes import DirectoryVolume, ModalVolume, VolumeFiles, check_remote_model, pull, push

__all__ = [
    "DirectoryVolume",
    "ModalVolume",
    "RemoteSession",
    "VolumeFiles",
    "check_remote_model",
    "gpu_options",
    "pull",
    "push",
    "session_kind",
]

logger = logging.getLogger(__name__)

#: The stage that starts (or joins) the app run; a first run builds the images in it.
CONNECTING = "connecting to Modal"

# --- sessions ---------------------------------------------------------------


def session_kind(remote_app: str | None = None) -> str:
    """``remote_app``, else ``$COLBERT_MODAL_REMOTE_APP`` / ``$COLBERT_MODAL_DEPLOYED``, else ephemeral."""
    kind = remote_app or os.environ.get("COLBERT_MODAL_REMOTE_APP") or ""
    if not kind and os.environ.get("COLBERT_MODAL_DEPLOYED", "").strip().lower() in ("1", "true", "yes", "on"):
        kind = "deployed"
    kind = (kind or "ephemeral").strip().lower()
    if kind not in KINDS:
        raise ConfigurationError(f"COLBERT_MODAL_REMOTE_APP must be one of {KINDS}, got {kind!r}")
    return kind


def _roundtrip(obj: Any) -> Any:
    """What the other side of the wire receives: a cloudpickle round trip."""
    import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(obj))


class _SharedAppRun:
    """The one ephemeral run of ``modal_app.app`` in this process, shared by every session.

    A ``modal.App`` can run once at a time (a second ``app.run()`` raises
    ``InvalidError("App is already running ...")``), so sessions take a
    reference and the run stops when the last one is released.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._run: Any = None
        self._output: Any = None

    @property
    def running(self) -> bool:
        return self._run is not None

    def acquire(self, *, verbose: bool = False, stage: Stage | None = None) -> None:
        """Join the run, starting it if none is open (``stage``: where to show the start and image builds)."""
        with self._lock:
            if self._run is None:
                self._start(verbose, stage)
            self._users += 1

    def _start(self, verbose: bool, stage: Stage | None) -> None:
        """Open the run; a first one builds the images (Modal's log in full with ``verbose``, else summarised)."""
        from .. import modal_app

        if verbose:  # show Modal's logs (image build, container start) while the app runs
            import modal

            self._output = modal.enable_output()
            self._output.__enter__()
        what = "starting the Modal app"
        try:
            with watching(stage, _image_labels()) as log:
                if stage is not None:
                    hint = "" if log.hooked else "; verbose=True shows Modal's log"
                    stage.note(f"a first run builds the images (minutes){hint}")
                try:
                    run = modal_app.app.run()
                    run.__enter__()
                except Exception as exc:
                    raise (build_error(exc, log, what) or translate_error(exc, what)) from exc
            if stage is not None and log.hooked:
                stage.note(log.summary())
        except BaseException:
            self._stop_output()
            raise
        self._run = run
        atexit.register(self._stop)

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                self._stop()

    def _stop(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            with contextlib.suppress(Exception):
                atexit.unregister(self._stop)
            with contextlib.suppress(Exception):
                run.__exit__(None, None, None)
        self._stop_output()

    def _stop_output(self) -> None:
        output, self._output = self._output, None
        if output is not None:
            with contextlib.suppress(Exception):
                output.__exit__(None, None, None)


APP_RUN = _SharedAppRun()


def _image_labels() -> list[tuple[str, tuple[str, ...]]]:
    """How the app's two images show in their build steps: the lock each installs, their bases."""
    from .. import modal_app

    return [
        ("client image", (modal_app.CLIENT_IMAGE_LOCK.name, "-slim-")),
        ("GPU image", (modal_app.IMAGE_LOCK.name, "nvidia/cuda", "apt-get", "ENTRYPOINT", "TORCH_CUDA_ARCH_LIST")),
    ]


class RemoteSession:
    """Handles on the Modal app for one indexer; :meth:`close` releases the shared app run.

    Nothing is started until a call needs it: reading Volume files
    (``pull``/``push``) needs no app run at all. The call that starts the
    run shows it as a "connecting to Modal" stage (a first run builds the
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
        if kind not in KINDS:
            raise ConfigurationError(f"remote session kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.gpu = gpu
        self._gpu_options = {role: gpu_options(gpu, kind, role) for role in ("Writer", "Searcher")}
        self.timeout = timeout
        self.verbose = verbose
        #: Whether the app's start shows (``Progress(progress)``: None decides from the environment).
        self.progress = progress
        self.closed = False
        self._holds_run = False
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: The newest generation this session published per index: searches ask for at least that one.
        self.written: dict[str, int] = {}
        #: Shard ids per index (None: unsharded), looked up once; dropped when this session writes the index.
        self._shards: dict[str, list[str] | None] = {}
        if kind != "inprocess":
            check_credentials()
            probe_server()

    def __repr__(self) -> str:
        return f"RemoteSession(kind={self.kind!r}, gpu={self.gpu!r}, closed={self.closed})"

    # --- handles -----------------------------------------------------------

    def start(self, progress: Progress | None = None) -> None:
        """Start (or join) the app run now rather than at the first call; builds the images if needed.

        Shown as a "connecting to Modal" stage, with the image builds' steps,
        on ``progress`` (default: the session's own, see :meth:`_ensure_app`).
        """
        self._ensure_app(progress=progress)

    def _ensure_app(self, stage: Stage | None = None, *, progress: Progress | None = None) -> None:
        """Join the shared app run (ephemeral sessions), starting it if none is open.

        Starting it is the "connecting to Modal" stage (a first run builds the
        images: minutes): ``stage`` if the caller has opened it, else one of
        its own on ``progress``, else on ``Progress(self.progress)``, shown
        only where watched.
        """
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        if self.kind != "ephemeral":
            return
        with self._lock:
            if self._holds_run:
                return
            if stage is None and not APP_RUN.running:
                progress = progress if progress is not None else Progress(self.progress)
                if progress.watched:
                    try:
                        with progress.stage(CONNECTING, unit="step") as own:
                            APP_RUN.acquire(verbose=self.verbose, stage=own)
                    finally:
                        progress.close()
                    self._holds_run = True
                    return
            APP_RUN.acquire(verbose=self.verbose, stage=stage)
            self._holds_run = True

    def _handle(self, name: str, *, cls: bool, options: dict[str, Any] | None = None) -> Any:
        self._ensure_app()
        key = f"{name}:{sorted((options or {}).items())}"
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                if self.kind == "deployed":
                    import modal

                    lookup = modal.Cls.from_name if cls else modal.Function.from_name
                    handle = lookup(APP_NAME, name)
                else:
                    from .. import modal_app

                    handle = getattr(modal_app, name)
                if options and self.kind != "inprocess":
                    handle = handle.with_options(**options)
                self._handles[key] = handle
            return handle

    def _writer(self) -> Any:
        options = dict(self._gpu_options["Writer"])
        if self.timeout:
            options["timeout"] = int(self.timeout)
        return self._handle("Writer", cls=True, options=options)()

    def _shard_kwargs(self) -> dict[str, Any]:
        """The Writer's ``shard_options``: this session's GPU and timeout for the ShardWriters (only if set,
        so that an app deployed before sharded indexes takes the call)."""
        options = dict(self._gpu_options["Writer"])
        if self.timeout:
            options["timeout"] = int(self.timeout)
        return {"shard_options": options} if options and self.kind != "inprocess" else {}

    def writer_timeout(self) -> float | None:
        """Seconds an index build may run: ``remote_timeout``, else the app's (unknown for a deployed app)."""
        if self.timeout or self.kind == "deployed":
            return int(self.timeout) if self.timeout else None
        from .. import modal_app

        return modal_app.WRITER_TIMEOUT

    def call(self, fn: Any, *args: Any, what: str, limit: float | None = None, **kwargs: Any) -> Any:
        """``fn.remote(...)``, or ``fn.local(...)`` with a pickle round trip in ``inprocess``."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        with translated(what, limit=limit):
            if self.kind == "inprocess":
                args, kwargs = _roundtrip((args, kwargs))
                return _roundtrip(fn.local(*args, **kwargs))
            return fn.remote(*args, **kwargs)

    # --- operations --------------------------------------------------------

    def manifest(self, name: str) -> Manifest | None:
        fn = self._handle("manifest", cls=False)
        data = self.call(fn, name, what=f"reading the manifest of {name!r}")
        return Manifest.from_json(data) if data is not None else None

    def info(self, name: str) -> IndexInfo:
        return self.call(self._handle("info", cls=False), name, what=f"reading index {name!r}")

    def stream(self, fn: Any, *args: Any, what: str, limit: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """The items of a Modal generator method: ``fn.remote_gen(...)``, or ``fn.local(...)`` in ``inprocess``."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        with translated(what, limit=limit):
            items: Iterable[Any]
            if self.kind == "inprocess":
                args, kwargs = _roundtrip((args, kwargs))
                items = (_roundtrip(item) for item in fn.local(*args, **kwargs))
            else:
                items = fn.remote_gen(*args, **kwargs)
            yield from items

    def apply(
        self, plan: UpdatePlan, *, backend: str, lock_timeout: float, progress: Progress | None = None
    ) -> IndexReport:
        """Apply ``plan`` on Modal, showing the remote stages on ``progress`` as the container reports them.

        Stages: connecting (starting the app run; a first run builds the
        images, which takes minutes: their steps show on the stage), the container start (until the
        container's first word), then the container's own (encoding in
        chunks, PLAID's, publishing, committing the Volume). Where nobody
        watches (no bars, no INFO log), the plain ``Writer.apply`` is called.
        """
        if (getattr(plan.settings, "shards", None) or 1) > 1:
            self._check_app_shards()
        if progress is None or not progress.watched:
            report: IndexReport = self.call(
                self._writer().apply, plan, backend=backend, lock_timeout=lock_timeout,
                what=f"indexing {plan.name!r}", limit=self.writer_timeout(), **self._shard_kwargs(),
            )
        else:
            report = self._apply_streamed(plan, backend=backend, lock_timeout=lock_timeout, progress=progress)
        if report.changed:
            self.written[plan.name] = max(self.written.get(plan.name, 0), plan.base_generation + 1)
            self._shards.pop(plan.name, None)
        return report

    def _apply_streamed(
        self, plan: UpdatePlan, *, backend: str, lock_timeout: float, progress: Progress
    ) -> IndexReport:
        """``Writer.apply_stream`` read with ``.remote_gen()``, its stages replayed on ``progress``."""
        what = f"indexing {plan.name!r}"
        limit = self.writer_timeout()
        streamed: IndexReport | None = None
        try:
            if self.kind == "ephemeral" and self._holds_run:  # connected at an earlier call
                writer = self._writer()
            else:
                with progress.stage(CONNECTING, unit="step") as stage:
                    self._ensure_app(stage)  # a first run builds the images: their steps are noted on the stage
                    writer = self._writer()
            starting = progress.stage("starting the container", unit="step")
            items = self.stream(
                writer.apply_stream, plan, backend=backend, lock_timeout=lock_timeout, what=what, limit=limit,
                **self._shard_kwargs(),
            )
            for item in items:
                if item[0] == "started":
                    starting.close()
                elif item[0] == "result":
                    streamed = item[1]
                else:
                    progress.replay(item)
        finally:
            progress.close()
        if streamed is None:
            raise RemoteError(f"{what}: the Modal container ended without a report")
        return streamed

    def adopt(self, name: str, upload: str) -> IndexInfo:
        info: IndexInfo = self.call(
            self._writer().adopt, name, upload, what=f"publishing the pushed index {name!r}", limit=self.writer_timeout()
        )
        self.written[name] = info.generation
        self._shards.pop(name, None)
        return info

    def _check_app_shards(self) -> None:
        """A deployed app from before sharded indexes would build one shard: refuse instead, before any work."""
        if self.kind != "deployed":
            return
        import modal.exception

        try:
            with translated("looking up the deployed app's ShardWriter"):
                self._handle("ShardWriter", cls=True).hydrate()
        except RemoteUnavailableError as exc:
            if isinstance(exc.__cause__, modal.exception.NotFoundError) and "ShardWriter" in str(exc.__cause__):
                raise ConfigurationError(
                    f"the deployed Modal app {APP_NAME!r} predates sharded indexes (it has no ShardWriter); "
                    "redeploy it with `colbert-modal deploy`, or index without shards="
                ) from exc
            raise

    def shards(self, name: str, *, fresh: bool = False) -> list[str] | None:
        """The shard ids of index ``name`` (None: unsharded), looked up once per session."""
        if fresh or name not in self._shards:
            try:
                found = self.call(self._handle("shards", cls=False), name, what=f"reading the shards of {name!r}")
            except RemoteUnavailableError:
                if self.kind != "deployed":
                    raise
                found = None  # a deployed app from before sharded indexes: none of its indexes is sharded
            self._shards[name] = found
        return self._shards[name]

    def search_batch(
        self, name: str, queries: list[str], k: int, where: dict[str, Any] | None = None
    ) -> list[SearchResults]:
        shards = self.shards(name)
        if shards:
            return self._search_shards(name, shards, queries, k, where)
        searcher = self._handle("Searcher", cls=True, options=self._gpu_options["Searcher"])(index_name=name)
        kwargs: dict[str, Any] = {"where": where} if where else {}  # an older deployed app takes no where
        results = self.call(
            searcher.search_batch, queries, k=k, min_generation=self.written.get(name), what=f"searching {name!r}",
            **kwargs,
        )
        return [SearchResults(r, query=getattr(r, "query", None) or q) for q, r in zip(queries, results, strict=True)]

    def _search_shards(
        self, name: str, shards: list[str], queries: list[str], k: int, where: dict[str, Any] | None
    ) -> list[SearchResults]:
        """Every shard's Searcher (one warm container each) called at once; hits merged by score.

        All shards must answer from one generation of the index: a shard
        that served an older one is asked again for the newest seen. A shard
        count that changed (a rebuild) looks the shards up again.
        """
        from concurrent.futures import ThreadPoolExecutor

        searcher = self._handle("Searcher", cls=True, options=self._gpu_options["Searcher"])
        kwargs: dict[str, Any] = {"where": where} if where else {}
        target = self.written.get(name)
        answers: dict[str, dict[str, Any]] = {}
        for _ in range(4):
            todo = [sid for sid in shards if sid not in answers or answers[sid]["generation"] < (target or 0)]

            def ask(sid: str, target: int | None = target) -> dict[str, Any]:
                return self.call(
                    searcher(index_name=name, shard=sid).search_shard, queries, k=k, min_generation=target,
                    what=f"searching shard {sid} of {name!r}", **kwargs,
                )

            try:
                with ThreadPoolExecutor(max_workers=min(len(todo), 32), thread_name_prefix="shard-search") as pool:
                    answers.update(zip(todo, pool.map(ask, todo), strict=True))
            except IndexNotFoundError:
                answers.clear()
                shards = self.shards(name, fresh=True) or []
                if not shards:  # rebuilt unsharded
                    return self.search_batch(name, queries, k, where)
                continue
            counts = {a["shards"] for a in answers.values()}
            gens = {a["generation"] for a in answers.values()}
            if counts != {len(shards)}:
                answers.clear()
                shards = self.shards(name, fresh=True) or []
                if not shards:
                    return self.search_batch(name, queries, k, where)
                target = max(gens)
                continue
            if len(gens) == 1:
                return [merge_results([answers[sid]["results"][i] for sid in shards], k, q)
                        for i, q in enumerate(queries)]
            target = max(gens)
        raise RemoteError(f"searching {name!r}: its shards kept answering from different generations "
                          "(it is being rewritten); try again")

    def volume(self) -> VolumeFiles:
        """The Volume's files, read and written from here (no app run needed)."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        if self.kind == "inprocess":
            return DirectoryVolume(volume_path())
        import modal

        return ModalVolume(modal.Volume.from_name(VOLUME_NAME))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            holds, self._holds_run = self._holds_run, False
        if holds:
            APP_RUN.release()


def gpu_options(gpu: str | None, kind: str, role: str) -> dict[str, Any]:
    """``with_options`` arguments for a per-indexer ``gpu`` (same syntax as ``$COLBERT_MODAL_GPU``).

    ``with_options`` takes one GPU type and cannot remove a GPU: a fallback list
    or ``"cpu"`` is accepted only where the app already uses it for ``role``.
    """
    if gpu is None or not gpu.strip():
        return {}
    wanted = gpu_setting(gpu, None)
    if isinstance(wanted, str):
        return {"gpu": wanted}
    if kind != "deployed":
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

