"""Remote mode (Modal): both halves of every remote operation.

Client half (runs on your machine, never imports torch): credentials check,
the Modal session, planning (load + chunk locally against the *remote*
manifest), error translation, ``pull``/``push``. These are what
:class:`~colbert_modal.ColbertIndexer` calls in ``mode="remote"``.

Server half (runs inside the Modal containers defined in
:mod:`colbert_modal.modal_app`, or in this process through ``.local()``):
:func:`read_manifest`, :func:`apply_plan`, :func:`adopt_upload`,
:class:`IndexServer`, :func:`warm_up`. They use the same engine and pipeline
code as local mode; only the index root differs (the Volume's mount path).

How a remote call reaches Modal is a *session kind*:

``ephemeral`` (default)
    ``app.run()`` under the hood, opened on first use and kept open until
    ``indexer.close()`` (or interpreter exit). Nothing to deploy; every new
    session pays an app start and cold containers.
``deployed``
    ``modal deploy -m colbert_modal.modal_app`` once, then the classes are
    looked up with ``modal.Cls.from_name("colbert-modal", ...)``. Warm
    containers survive between your processes; redeploy after upgrading
    colbert-modal (the containers run the deployed code).
``inprocess``
    Runs the very same Modal function/class bodies here through ``.local()``
    with ``$COLBERT_MODAL_VOLUME_PATH`` standing in for the Volume; arguments
    and results go through cloudpickle as they would on the wire. For tests
    and debugging; needs the ``local`` extra.

Pick one with ``$COLBERT_MODAL_REMOTE_APP`` (``ephemeral`` / ``deployed`` /
``inprocess``), ``COLBERT_MODAL_DEPLOYED=1``, or an indexer attribute
``remote_app``.

Nothing in this module imports modal at import time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import (
    ColbertModalError,
    ConfigurationError,
    IndexNotFoundError,
    ModalCredentialsError,
    RemoteError,
    RemoteUnavailableError,
)
from .models import IndexInfo, IndexReport, SearchResult, SearchResults
from .pipeline import Settings, UpdatePlan, apply_update, nothing_to_index, plan_deletion, plan_update
from .store import Generation, IndexStore, Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .indexer import ColbertIndexer

__all__ = [
    "APP_NAME",
    "KINDS",
    "IndexServer",
    "RemoteSession",
    "adopt_upload",
    "apply_plan",
    "check_credentials",
    "container_model",
    "delete",
    "index",
    "info",
    "pull",
    "push",
    "read_info",
    "read_manifest",
    "search_batch",
    "session_for",
    "volume_path",
    "warm_up",
]

logger = logging.getLogger(__name__)

APP_NAME = "colbert-modal"
VOLUME_NAME = "colbert-modal-indexes"
#: Where the Volume is mounted in the containers.
VOLUME_MOUNT = "/indexes"
KINDS = ("ephemeral", "deployed", "inprocess")

_CREDENTIALS_HELP = (
    "Modal credentials are not configured on this machine. Run `modal setup` "
    "(or `modal token new`) once, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
    "(e.g. from a CI secret). Remote mode runs on your Modal account."
)


# =========================================================================
# Server half: runs where the Volume is mounted
# =========================================================================


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


def _engine_factory(verbose: bool = False) -> Callable[[str], Any]:
    from .engine import get_engine

    return lambda model: get_engine(container_model(model), verbose=verbose)


def read_manifest(root: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The published manifest of index ``name`` under ``root`` as JSON, or None."""
    store = IndexStore(root, name)
    if not store.exists():
        return None
    return store.current().manifest.to_json()


def read_info(root: str | os.PathLike[str], name: str) -> IndexInfo:
    from .indexer import info_from_generation

    return info_from_generation(IndexStore(root, name).current())


def apply_plan(
    root: str | os.PathLike[str], plan: UpdatePlan, *, backend: str = "auto", lock_timeout: float = 0.0
) -> IndexReport:
    """Carry out ``plan`` on the index under ``root``: the local-mode engine code, under the index lock.

    ``apply_update`` checks ``plan.base_generation`` against what is
    published (optimistic concurrency) and publishes the new generation
    atomically, so readers never see a half-written index.
    """
    store = IndexStore(root, plan.name)
    with store.lock(lock_timeout):
        return apply_update(store, plan, engine_factory=_engine_factory(), backend=backend)


def adopt_upload(root: str | os.PathLike[str], name: str, upload: str) -> IndexInfo:
    """Publish a generation uploaded by :func:`push` to ``<name>/uploads/<upload>``.

    Under the index lock: the upload becomes the next generation (numbered
    after whatever is there) and is published atomically.
    """
    store = IndexStore(root, name)
    staging = store.path / "uploads" / upload
    if not (staging / "manifest.json").is_file():
        raise IndexNotFoundError(f"upload {upload!r} of index {name!r} not found on the Volume")
    with store.lock():
        manifest = Manifest.from_json(json.loads((staging / "manifest.json").read_text(encoding="utf-8")))
        manifest.name = name
        manifest.generation = store.next_generation_number()
        build = store.new_build_dir(manifest.generation)
        build.rmdir()
        os.replace(staging, build)
        chunks = Generation(build, manifest).chunks()
        gen = store.publish(build, manifest, chunks)
        shutil.rmtree(store.path / "uploads", ignore_errors=True)
    from .indexer import info_from_generation

    return info_from_generation(gen)


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
            min_refresh_interval = float(os.environ.get("COLBERT_MODAL_REFRESH_INTERVAL", "0") or 0)
        self.min_refresh_interval = min_refresh_interval
        self.verbose = verbose
        self._cache = Path(tempfile.mkdtemp(prefix=f"colbert-modal-{name}-"))
        self._loaded: tuple[str, Any, list[Any], Manifest] | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def generation(self) -> int | None:
        """The generation being served (None before an index is published)."""
        return self._loaded[3].generation if self._loaded else None

    def load_model(self, model: str | None = None) -> None:
        """Load the model (the index's, or ``model``) so the first search is warm."""
        if model is None:
            manifest = read_manifest(self.store.root, self.store.name)
            if manifest is None:
                return
            model = manifest["model"]
        _engine_factory(self.verbose)(model).rag  # noqa: B018 - loads the checkpoint

    def refresh(self, *, force: bool = False) -> bool:
        """Switch to the newest published generation; True if it changed."""
        with self._lock:
            now = time.monotonic()
            if not force and self._loaded is not None and now - self._checked_at < self.min_refresh_interval:
                return False
            self._checked_at = now
            if self._reload is not None:
                try:
                    self._reload()
                except Exception as exc:  # keep serving what we have
                    logger.warning("Volume reload failed (%s: %s); serving the loaded generation", type(exc).__name__, exc)
            current = self.store.current_generation_name()
            if current is None:
                self.store.current()  # raises IndexNotFoundError with the message
            if self._loaded is not None and self._loaded[0] == current:
                return False
            self._open(current)  # type: ignore[arg-type]
            return True

    def _open(self, gen_name: str) -> None:
        from .engine import get_engine

        src = self.store.path / "generations" / gen_name
        dest = self._cache / gen_name
        if not dest.exists():
            tmp = self._cache / f".{gen_name}.{uuid.uuid4().hex[:8]}"
            shutil.copytree(src, tmp)
            os.replace(tmp, dest)
        data = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
        gen = Generation(dest, Manifest.from_json(data))
        chunks = gen.chunks()
        engine = get_engine(container_model(gen.manifest.model), verbose=self.verbose)
        searcher = engine.open(gen.engine_dir, gen.manifest.backend, [c.text for c in chunks])
        old = self._loaded
        self._loaded = (gen_name, searcher, chunks, gen.manifest)
        if old is not None and old[0] != gen_name:
            shutil.rmtree(self._cache / old[0], ignore_errors=True)

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[SearchResults]:
        from .indexer import _check_queries, _to_results

        queries = _check_queries(queries, k)
        self.refresh()
        if not queries:
            return []
        assert self._loaded is not None
        _, searcher, chunks, _ = self._loaded
        hits = searcher.search(queries, k)
        return [SearchResults(_to_results(h, chunks)) for h in hits]

    def close(self) -> None:
        self._loaded = None
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
    from .chunking import Chunker, load_tokenizer

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


# =========================================================================
# Client half
# =========================================================================


def check_credentials() -> None:
    """Raise :class:`ModalCredentialsError` at once if no Modal token is configured."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return
    import modal.config

    cfg = modal.config.config
    if cfg.get("token_id") and cfg.get("token_secret"):
        return
    raise ModalCredentialsError(_CREDENTIALS_HELP)


def _probe_server(timeout: float | None = None) -> None:
    """Fail fast (``timeout`` s) if Modal's API server cannot be reached at all.

    Modal's own client retries for about a minute before giving up; a TCP
    connect tells us much sooner. Disable with ``COLBERT_MODAL_PROBE_TIMEOUT=0``.
    """
    if timeout is None:
        timeout = float(os.environ.get("COLBERT_MODAL_PROBE_TIMEOUT", "5") or 0)
    if timeout <= 0:
        return
    import modal.config

    url = os.environ.get("MODAL_SERVER_URL") or modal.config.config.get("server_url") or "https://api.modal.com"
    parsed = urlparse(url)
    host = parsed.hostname or "api.modal.com"
    port = parsed.port or (443 if parsed.scheme in ("https", "grpcs") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RemoteUnavailableError(
            f"cannot reach Modal at {host}:{port} within {timeout:g} s ({exc}). "
            "Check your network/proxy, or use mode='local'."
        ) from exc


def translate_error(exc: BaseException, what: str) -> ColbertModalError:
    """The colbert_modal error for an exception raised by a remote call."""
    if isinstance(exc, ColbertModalError):
        return exc
    import modal.exception as mexc

    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, mexc.AuthError):
        return ModalCredentialsError(f"{what}: Modal refused the credentials ({detail}). {_CREDENTIALS_HELP}")
    if isinstance(exc, mexc.NotFoundError):
        return RemoteUnavailableError(
            f"{what}: {detail}. With COLBERT_MODAL_REMOTE_APP=deployed, deploy the app first: "
            "`modal deploy -m colbert_modal.modal_app`."
        )
    if isinstance(exc, (mexc.ConnectionError, ConnectionError, TimeoutError, mexc.TimeoutError)):
        return RemoteUnavailableError(f"{what}: Modal cannot be reached ({detail})")
    return RemoteError(f"{what} failed on Modal ({detail})")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except ColbertModalError:
        raise
    except Exception as exc:
        raise translate_error(exc, what) from exc


def _kind_for(indexer: Any) -> str:
    kind = getattr(indexer, "remote_app", None) or os.environ.get("COLBERT_MODAL_REMOTE_APP") or ""
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


class RemoteSession:
    """Handles on the Modal app for one indexer; ``close()`` stops an ephemeral app run."""

    def __init__(self, kind: str = "ephemeral", *, gpu: str | None = None, verbose: bool = False) -> None:
        if kind not in KINDS:
            raise ConfigurationError(f"remote session kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.gpu = gpu
        self.closed = False
        self._run: Any = None
        self._output: Any = None
        self._classes: dict[str, Any] = {}
        self._searchers: dict[str, Any] = {}
        self._lock = threading.Lock()
        if kind != "inprocess":
            check_credentials()
            _probe_server()
        if kind == "ephemeral":
            from . import modal_app

            if verbose:  # show Modal's logs (image build, container start) while the app runs
                import modal

                self._output = modal.enable_output()
                self._output.__enter__()
            with _translated("starting the Modal app"):
                run = modal_app.app.run()
                try:
                    run.__enter__()
                except BaseException:
                    self.close()
                    raise
            self._run = run
            atexit.register(self.close)

    def __repr__(self) -> str:
        return f"RemoteSession(kind={self.kind!r}, gpu={self.gpu!r}, closed={self.closed})"

    # --- handles -----------------------------------------------------------

    def _cls(self, name: str) -> Any:
        with self._lock:
            cls = self._classes.get(name)
            if cls is None:
                if self.kind == "deployed":
                    import modal

                    cls = modal.Cls.from_name(APP_NAME, name)
                else:
                    from . import modal_app

                    cls = getattr(modal_app, name)
                if self.gpu and self.kind != "inprocess":
                    cls = cls.with_options(gpu=self.gpu)
                self._classes[name] = cls
            return cls

    def _function(self, name: str) -> Any:
        with self._lock:
            fn = self._classes.get(f"fn:{name}")
            if fn is None:
                if self.kind == "deployed":
                    import modal

                    fn = modal.Function.from_name(APP_NAME, name)
                else:
                    from . import modal_app

                    fn = getattr(modal_app, name)
                self._classes[f"fn:{name}"] = fn
            return fn

    def _searcher(self, index_name: str) -> Any:
        with self._lock:
            obj = self._searchers.get(index_name)
        if obj is None:
            obj = self._cls("Searcher")(index_name=index_name)
            with self._lock:
                obj = self._searchers.setdefault(index_name, obj)
        return obj

    def call(self, fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        """``fn.remote(...)``, or ``fn.local(...)`` with a pickle round trip in ``inprocess``."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        with _translated(what):
            if self.kind == "inprocess":
                args, kwargs = _roundtrip((args, kwargs))
                return _roundtrip(fn.local(*args, **kwargs))
            return fn.remote(*args, **kwargs)

    # --- operations --------------------------------------------------------

    def manifest(self, name: str) -> Manifest | None:
        data = self.call(self._function("manifest"), name, what=f"reading the manifest of {name!r}")
        return Manifest.from_json(data) if data is not None else None

    def info(self, name: str) -> IndexInfo:
        return self.call(self._function("info"), name, what=f"reading index {name!r}")

    def apply(self, plan: UpdatePlan, *, backend: str, lock_timeout: float) -> IndexReport:
        writer = self._cls("Writer")()
        return self.call(writer.apply, plan, backend=backend, lock_timeout=lock_timeout, what=f"indexing {plan.name!r}")

    def adopt(self, name: str, upload: str) -> IndexInfo:
        writer = self._cls("Writer")()
        return self.call(writer.adopt, name, upload, what=f"publishing the pushed index {name!r}")

    def search_batch(self, name: str, queries: list[str], k: int) -> list[list[SearchResult]]:
        searcher = self._searcher(name)
        return self.call(searcher.search_batch, queries, k=k, what=f"searching {name!r}")

    def volume(self) -> _VolumeFiles:
        if self.kind == "inprocess":
            return _DirectoryVolume(volume_path())
        from . import modal_app

        return _ModalVolume(modal_app.volume)  # pragma: no cover - needs Modal

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        run, self._run = self._run, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if run is not None:
            with contextlib.suppress(Exception):
                run.__exit__(None, None, None)
        output, self._output = self._output, None
        if output is not None:
            with contextlib.suppress(Exception):
                output.__exit__(None, None, None)


def session_for(indexer: Any) -> RemoteSession:
    """The indexer's open session, started (credentials checked first) if needed."""
    session = getattr(indexer, "_remote_session", None)
    if session is None or session.closed:
        session = RemoteSession(_kind_for(indexer), gpu=indexer.gpu, verbose=indexer.verbose)
        indexer._remote_session = session
    return session


def _check_remote_model(model: str, session: RemoteSession) -> None:
    if session.kind == "inprocess":
        return  # the bodies run here; a local checkpoint directory is fine
    p = Path(model).expanduser()
    if p.is_dir() or p.is_absolute() or model.startswith((".", "~")):
        raise ConfigurationError(
            f"model {model!r} is a local checkpoint directory; remote mode runs on Modal, which cannot "
            "see your files. Use a Hugging Face hub id (e.g. 'colbert-ir/colbertv2.0', baked into the "
            "image at a pinned revision; more via COLBERT_MODAL_MODELS at deploy time), or mode='local'."
        )


def index(
    indexer: ColbertIndexer,
    paths: list[str],
    *,
    passwords: Any = None,
    rebuild: bool = False,
    keep_missing: bool = False,
) -> IndexReport:
    """Plan the update here (load + chunk against the remote manifest), apply it on Modal."""
    session = session_for(indexer)
    if indexer._model_arg is not None:  # fail before any remote call
        _check_remote_model(indexer._settings(None, True).model, session)
    manifest = session.manifest(indexer.name)
    _check_remote_model(indexer._settings(manifest, rebuild).model, session)
    plan = indexer._plan(paths, manifest, passwords=passwords, rebuild=rebuild, keep_missing=keep_missing)
    if manifest is None and not plan.new_chunks:
        # Nothing to build: say so here (with the report; no GPU container started).
        raise nothing_to_index(plan)
    return session.apply(plan, backend=indexer.backend, lock_timeout=indexer.lock_timeout)


def delete(indexer: ColbertIndexer, paths: list[str]) -> IndexReport:
    session = session_for(indexer)
    manifest = session.manifest(indexer.name)
    if manifest is None:
        raise IndexNotFoundError(f"no index named {indexer.name!r} on the Modal Volume {VOLUME_NAME!r}")
    plan = plan_deletion(paths, manifest=manifest, settings=Settings(manifest.model, manifest.max_tokens, manifest.overlap))
    return session.apply(plan, backend=indexer.backend, lock_timeout=indexer.lock_timeout)


def search_batch(indexer: ColbertIndexer, queries: list[str], *, k: int = 10) -> list[list[SearchResult]]:
    if not queries:
        return []
    session = session_for(indexer)
    return [SearchResults(r) for r in session.search_batch(indexer.name, list(queries), k)]


def info(indexer: ColbertIndexer) -> IndexInfo:
    return session_for(indexer).info(indexer.name)


# --- pull / push ------------------------------------------------------------


class _VolumeFiles:
    """The few Volume operations pull/push need, with paths relative to the Volume root."""

    def read(self, path: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self, path: str) -> list[str]:  # pragma: no cover - interface
        """Every file under ``path`` (recursively), relative to the Volume root."""
        raise NotImplementedError

    def upload(self, local_dir: Path, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _DirectoryVolume(_VolumeFiles):
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


class _ModalVolume(_VolumeFiles):  # pragma: no cover - needs Modal's cloud
    """A real ``modal.Volume``, used from outside any container."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def read(self, path: str) -> bytes:
        import modal.exception

        try:
            return b"".join(self.volume.read_file(path))
        except modal.exception.NotFoundError:
            raise FileNotFoundError(path) from None

    def files(self, path: str) -> list[str]:
        from modal.volume import FileEntryType

        return sorted(e.path for e in self.volume.listdir(path, recursive=True) if e.type == FileEntryType.FILE)

    def upload(self, local_dir: Path, path: str) -> None:
        with self.volume.batch_upload() as batch:
            batch.put_directory(str(local_dir), path)


def pull(indexer: ColbertIndexer, *, overwrite: bool = True) -> Path:
    """Copy the published index from the Volume into ``indexer.index_root``; returns its path."""
    session = session_for(indexer)
    vol = session.volume()
    store = indexer.store
    name = indexer.name
    if store.exists() and not overwrite:
        raise ConfigurationError(
            f"a local index named {name!r} already exists under {store.root}; pass overwrite=True to replace it"
        )
    with _translated(f"pulling {name!r}"):
        try:
            gen_name = vol.read(f"{name}/CURRENT").decode("utf-8").strip()
        except FileNotFoundError:
            raise IndexNotFoundError(f"no index named {name!r} on the Modal Volume {VOLUME_NAME!r}") from None
        prefix = f"{name}/generations/{gen_name}"
        with store.lock(indexer.lock_timeout):
            number = store.next_generation_number()
            build = store.new_build_dir(number)
            for rel in vol.files(prefix):
                dest = build / PurePosixPath(rel).relative_to(prefix)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(vol.read(rel))
            manifest = Manifest.from_json(json.loads((build / "manifest.json").read_text(encoding="utf-8")))
            manifest.generation = number
            chunks = Generation(build, manifest).chunks()
            store.publish(build, manifest, chunks)
    indexer._searcher = None
    return store.path


def push(indexer: ColbertIndexer) -> None:
    """Copy the local index to the Volume and publish it there (replacing the remote one)."""
    session = session_for(indexer)
    gen = indexer.store.current()
    _check_remote_model(gen.manifest.model, session)
    upload = uuid.uuid4().hex
    with _translated(f"pushing {indexer.name!r}"):
        session.volume().upload(gen.path, f"{indexer.name}/uploads/{upload}")
    session.adopt(indexer.name, upload)
