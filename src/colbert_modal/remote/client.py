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
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ..errors import (
    ColbertModalError,
    ConfigurationError,
    IndexNotFoundError,
    ModalCredentialsError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from ..models import IndexInfo, IndexReport, SearchResults
from ..pipeline import UpdatePlan
from ..store import Generation, IndexStore, Manifest
from . import APP_NAME, KINDS, VOLUME_NAME
from .server import volume_path

__all__ = [
    "RemoteSession",
    "check_credentials",
    "check_remote_model",
    "probe_server",
    "pull",
    "push",
    "session_kind",
    "translate_error",
    "translated",
]

logger = logging.getLogger(__name__)

CREDENTIALS_HELP = (
    "Run `modal setup` (or `modal token new`) once, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
    "(e.g. from a CI secret). Remote mode runs on your Modal account."
)
DEPLOY_HINT = "deploy the app first: `colbert-modal deploy` (or `modal deploy -m colbert_modal.modal_app`)"


# --- credentials and reachability -------------------------------------------


def check_credentials() -> None:
    """Raise :class:`ModalCredentialsError` at once where the modal client would refuse to authenticate.

    Accepts what the client accepts: a token pair or complete OAuth settings,
    from the environment or the active profile of ``~/.modal.toml``
    (``MODAL_PROFILE`` picks another). Secrets are never put in messages.
    """
    import modal.config as mconfig

    cfg = mconfig.config
    token_id, token_secret = cfg.get("token_id"), cfg.get("token_secret")
    oauth = {k: cfg.get(k) for k in ("oauth_refresh_token", "oauth_client_id", "oauth_client_secret", "oauth_jwt_key")}
    has_token = bool(token_id or token_secret)
    has_oauth = any(oauth.values())
    if has_token and has_oauth:
        raise ModalCredentialsError(
            "Modal token credentials and OAuth credentials are both configured; the modal client refuses that. "
            "Keep one of them."
        )
    if has_oauth:
        if not (oauth["oauth_refresh_token"] and oauth["oauth_client_id"]) or bool(
            oauth["oauth_client_secret"]
        ) == bool(oauth["oauth_jwt_key"]):
            raise ModalCredentialsError(
                "Modal OAuth settings are incomplete: the client needs a refresh token, a client ID and exactly "
                "one of a client secret or a JWT key (MODAL_OAUTH_*)."
            )
        return
    if token_id and token_secret:
        return
    profile = getattr(mconfig, "_profile", None)
    if os.environ.get("MODAL_PROFILE") and profile not in getattr(mconfig, "_user_config", {}):
        raise ModalCredentialsError(
            f"Modal profile {profile!r} was not found in {getattr(mconfig, 'user_config_path', '~/.modal.toml')}. "
            f"Run `modal profile list`, or `modal token new --profile {profile}`."
        )
    if has_token:
        raise ModalCredentialsError("Modal token ID and secret must both be configured. " + CREDENTIALS_HELP)
    raise ModalCredentialsError("Modal credentials are not configured on this machine. " + CREDENTIALS_HELP)


def server_urls() -> list[str]:
    """The Modal API URLs the client will try: the active setting, split as the client splits it."""
    import modal.config as mconfig

    value = str(mconfig.config.get("server_url") or "")
    return [u.strip() for u in value.split(",") if u.strip()]


def probe_server(timeout: float | None = None) -> None:
    """Fail fast (``timeout`` s) where none of Modal's API hosts can be reached at all.

    Modal's own client retries for about a minute before giving up; a TCP
    connect tells us much sooner. The server URL may be a comma-separated
    list (the client's default is one): the hosts are raced, and one that
    connects is enough. ``COLBERT_MODAL_PROBE_TIMEOUT=0`` disables the probe.
    """
    if timeout is None:
        timeout = float(os.environ.get("COLBERT_MODAL_PROBE_TIMEOUT", "5") or 0)
    if timeout <= 0:
        return
    targets = []
    for url in server_urls():
        parsed = urlparse(url)
        if not parsed.hostname:
            continue  # the client reports a malformed URL itself
        targets.append((parsed.hostname, parsed.port or (443 if parsed.scheme in ("https", "grpcs") else 80)))
    if not targets:
        return

    def connect(target: tuple[str, int]) -> None:
        with socket.create_connection(target, timeout=timeout):
            pass

    errors: list[str] = []
    pool = ThreadPoolExecutor(max_workers=len(targets))
    try:
        pending = {pool.submit(connect, t): t for t in targets}
        while pending:
            done, _ = wait(pending, timeout=timeout + 1, return_when=FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                host, port = pending.pop(fut)
                exc = fut.exception()
                if exc is None:
                    return
                errors.append(f"{host}:{port}: {exc}")
    finally:
        pool.shutdown(wait=False)
    where = ", ".join(f"{h}:{p}" for h, p in targets)
    raise RemoteUnavailableError(
        f"cannot reach Modal at {where} within {timeout:g} s ({'; '.join(errors) or 'no answer'}). "
        "Check your network/proxy, or use mode='local'."
    )


# --- errors -----------------------------------------------------------------


def translate_error(exc: BaseException, what: str) -> ColbertModalError:
    """The colbert_modal error for an exception raised by a remote call."""
    if isinstance(exc, ColbertModalError):
        return exc
    import modal.exception as mexc

    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, mexc.AuthError):
        return ModalCredentialsError(f"{what}: Modal refused the credentials ({detail}). {CREDENTIALS_HELP}")
    if isinstance(exc, mexc.FunctionTimeoutError):  # before TimeoutError: it subclasses it
        return RemoteTimeoutError(
            f"{what} ran past its time limit on Modal ({detail}). Raise the limit with "
            "ColbertIndexer(remote_timeout=seconds) or $COLBERT_MODAL_TIMEOUT, or index fewer files per call."
        )
    if isinstance(exc, mexc.NotFoundError):
        return RemoteUnavailableError(f"{what}: {detail}. With COLBERT_MODAL_REMOTE_APP=deployed, {DEPLOY_HINT}.")
    if isinstance(exc, (mexc.ConnectionError, ConnectionError, TimeoutError, mexc.TimeoutError)):
        return RemoteUnavailableError(f"{what}: Modal cannot be reached ({detail})")
    return RemoteError(f"{what} failed on Modal ({detail})")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn any non-library exception raised inside into our error tree (original as ``__cause__``)."""
    try:
        yield
    except ColbertModalError:
        raise
    except Exception as exc:
        raise translate_error(exc, what) from exc


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
        self.timeout = timeout
        self.verbose = verbose
        self.closed = False
        self._holds_run = False
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: The newest generation this session published per index: searches ask for at least that one.
        self.written: dict[str, int] = {}
        if kind != "inprocess":
            check_credentials()
            probe_server()

    def __repr__(self) -> str:
        return f"RemoteSession(kind={self.kind!r}, gpu={self.gpu!r}, closed={self.closed})"

    # --- handles -----------------------------------------------------------

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
        options: dict[str, Any] = {}
        if self.gpu:
            options["gpu"] = self.gpu
        if self.timeout:
            options["timeout"] = int(self.timeout)
        return self._handle("Writer", cls=True, options=options)()

    def call(self, fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        """``fn.remote(...)``, or ``fn.local(...)`` with a pickle round trip in ``inprocess``."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        with translated(what):
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

    def apply(self, plan: UpdatePlan, *, backend: str, lock_timeout: float) -> IndexReport:
        report: IndexReport = self.call(
            self._writer().apply, plan, backend=backend, lock_timeout=lock_timeout, what=f"indexing {plan.name!r}"
        )
        if report.changed:
            self.written[plan.name] = max(self.written.get(plan.name, 0), plan.base_generation + 1)
        return report

    def adopt(self, name: str, upload: str) -> IndexInfo:
        info: IndexInfo = self.call(self._writer().adopt, name, upload, what=f"publishing the pushed index {name!r}")
        self.written[name] = info.generation
        return info

    def search_batch(
        self, name: str, queries: list[str], k: int, where: dict[str, Any] | None = None
    ) -> list[SearchResults]:
        options = {"gpu": self.gpu} if self.gpu else None
        searcher = self._handle("Searcher", cls=True, options=options)(index_name=name)
        kwargs: dict[str, Any] = {"where": where} if where else {}  # an older deployed app takes no where
        results = self.call(
            searcher.search_batch, queries, k=k, min_generation=self.written.get(name), what=f"searching {name!r}",
            **kwargs,
        )
        return [SearchResults(r) for r in results]

    def volume(self) -> VolumeFiles:
        """The Volume's files, read and written from here (no app run needed)."""
        if self.closed:
            raise RemoteError("this remote session is closed; create a new ColbertIndexer")
        if self.kind == "inprocess":
            return DirectoryVolume(volume_path())
        import modal  # pragma: no cover - needs Modal's cloud

        return ModalVolume(modal.Volume.from_name(VOLUME_NAME))  # pragma: no cover

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            holds, self._holds_run = self._holds_run, False
        if holds:
            APP_RUN.release()


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
            for rel in vol.files(prefix):
                dest = staging / PurePosixPath(rel).relative_to(prefix)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(vol.read(rel))
            store.adopt(staging)
    return store.path


def push(session: RemoteSession, generation: Generation) -> IndexInfo:
    """Copy a local generation to the Volume and publish it there (replacing the remote index)."""
    name = generation.manifest.name
    check_remote_model(generation.manifest.model, session)
    upload = uuid.uuid4().hex
    with translated(f"pushing {name!r}"):
        session.volume().upload(generation.path, f"{name}/uploads/{upload}")
    return session.adopt(name, upload)
