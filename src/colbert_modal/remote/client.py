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
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import (
    ConfigurationError,
    IndexNotFoundError,
    RemoteError,
    RemoteUnavailableError,
)
from ..models import IndexInfo, IndexReport, SearchResults
from ..pipeline import UpdatePlan
from ..progress import Progress
from ..sharding import adopt_shards, merge_results, shard_generation
from ..store import Generation, IndexStore, Manifest
from . import APP_NAME, KINDS, VOLUME_NAME, gpu_setting
from .connection import check_credentials, probe_server, translated
from .server import volume_path

__all__ = [
    "RemoteSession",
    "check_remote_model",
    "gpu_options",
    "pull",
    "push",
    "session_kind",
]

logger = logging.getLogger(__name__)

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

    def acquire(self, *, verbose: bool = False) -> None:
        with self._lock:
            if self._run is None:
                self._start(verbose)
            self._users += 1

    def _start(self, verbose: bool) -> None:
        from .. import modal_app

        if verbose:  # show Modal's logs (image build, container start) while the app runs
            import modal

            self._output = modal.enable_output()
            self._output.__enter__()
        try:
            with translated("starting the Modal app"):
                run = modal_app.app.run()
                run.__enter__()
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


class RemoteSession:
    """Handles on the Modal app for one indexer; :meth:`close` releases the shared app run.

    Nothing is started until a call needs it: reading Volume files
    (``pull``/``push``) needs no app run at all.
    """

    def __init__(
        self,
        kind: str = "ephemeral",
        *,
        gpu: str | None = None,
        timeout: float | None = None,
        verbose: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ConfigurationError(f"remote session kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.gpu = gpu
        self._gpu_options = {role: gpu_options(gpu, kind, role) for role in ("Writer", "Searcher")}
        self.timeout = timeout
        self.verbose = verbose
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

    def start(self) -> None:
        """Start (or join) the app run now rather than at the first call; builds the images if needed."""
        self._ensure_app()

    def _ensure_app(self) -> None:
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        if self.kind == "ephemeral":
            with self._lock:
                if not self._holds_run:
                    APP_RUN.acquire(verbose=self.verbose)
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
        image, which takes minutes), the container start (until the
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
            with progress.stage("connecting to Modal", unit="step") as stage:
                if self.kind == "ephemeral" and not APP_RUN.running:
                    stage.note("a first run builds the image (minutes); verbose=True shows Modal's log")
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


def check_remote_model(model: str, session: RemoteSession) -> None:
    """Refuse a local checkpoint directory for a session that runs on Modal (it cannot see it)."""
    if session.kind == "inprocess":
        return  # the bodies run here; a local checkpoint directory is fine
    p = Path(model).expanduser()
    if p.is_dir() or p.is_absolute() or model.startswith((".", "~")):
        raise ConfigurationError(
            f"model {model!r} is a local checkpoint directory; remote mode runs on Modal, which cannot "
            "see your files. Use a Hugging Face hub id (e.g. 'colbert-ir/colbertv2.0', baked into the "
            "image at a pinned revision; more via COLBERT_MODAL_MODELS at deploy time), or mode='local'."
        )


# --- pull / push ------------------------------------------------------------


class VolumeFiles:
    """The few Volume operations pull/push need, with paths relative to the Volume root."""

    def read(self, path: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self, path: str) -> list[str]:  # pragma: no cover - interface
        """Every file under ``path`` (recursively), relative to the Volume root."""
        raise NotImplementedError

    def upload(self, local_dir: Path, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def remove(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DirectoryVolume(VolumeFiles):
    """A directory standing in for the Volume (``inprocess`` sessions)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(path) from None

    def files(self, path: str) -> list[str]:
        base = self.root / path
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def upload(self, local_dir: Path, path: str) -> None:
        shutil.copytree(local_dir, self.root / path)

    def remove(self, path: str) -> None:
        target = self.root / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


class ModalVolume(VolumeFiles):
    """A real ``modal.Volume``, used from outside any container."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def read(self, path: str) -> bytes:
        import modal.exception

        try:
            return b"".join(self.volume.read_file(path))
        except (FileNotFoundError, modal.exception.NotFoundError):  # the client raises the builtin
            raise FileNotFoundError(path) from None

    def files(self, path: str) -> list[str]:
        from modal.types import FileEntryType

        return sorted(e.path for e in self.volume.listdir(path, recursive=True) if e.type == FileEntryType.FILE)

    def upload(self, local_dir: Path, path: str) -> None:
        with self.volume.batch_upload() as batch:
            batch.put_directory(str(local_dir), path)

    def remove(self, path: str) -> None:
        self.volume.remove_file(path, recursive=True)


def pull(session: RemoteSession, store: IndexStore, *, overwrite: bool = True, lock_timeout: float = 0.0) -> Path:
    """Copy the published index ``store.name`` from the Volume into ``store``; returns its path."""
    vol = session.volume()
    name = store.name
    if store.exists() and not overwrite:
        raise ConfigurationError(
            f"a local index named {name!r} already exists under {store.root}; pass overwrite=True to replace it"
        )
    with translated(f"pulling {name!r}"):
        try:
            gen_name = vol.read(f"{name}/CURRENT").decode("utf-8").strip()
        except FileNotFoundError:
            raise IndexNotFoundError(f"no index named {name!r} on the Modal Volume {VOLUME_NAME!r}") from None
        prefix = f"{name}/generations/{gen_name}"
        with store.lock(lock_timeout):
            staging = store.staging_dir()
            _download(vol, prefix, staging)
            # a sharded index: each shard's generation the top one names, into the local shard's next one
            adopt_shards(store, staging,
                         lambda sid, gen, dest: _download(vol, f"{name}/shards/{sid}/generations/{gen}", dest))
            store.adopt(staging)
    return store.path


def _download(vol: VolumeFiles, prefix: str, dest_dir: Path) -> None:
    """Every file under ``prefix`` on the Volume, into ``dest_dir`` (same relative paths)."""
    for rel in vol.files(prefix):
        dest = dest_dir / PurePosixPath(rel).relative_to(prefix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(vol.read(rel))


def push(session: RemoteSession, generation: Generation) -> IndexInfo:
    """Copy a local generation to the Volume and publish it there (replacing the remote index)."""
    name = generation.manifest.name
    check_remote_model(generation.manifest.model, session)
    upload = uuid.uuid4().hex
    with translated(f"pushing {name!r}"):
        vol = session.volume()
        vol.upload(generation.path, f"{name}/uploads/{upload}")
        for sid in generation.manifest.shards or {}:  # a sharded index: every shard's live generation too
            part = shard_generation(generation, sid)
            if part is not None:
                vol.upload(part.path, f"{name}/uploads/{upload}/shards/{sid}")
    return session.adopt(name, upload)
