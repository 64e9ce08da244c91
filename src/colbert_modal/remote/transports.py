"""How a remote session reaches the Modal app: three transports behind one interface, chosen once.

:class:`~colbert_modal.remote.client.RemoteSession` holds one
:class:`Transport`, picked by :func:`transport_for` from the session kind
(see :mod:`colbert_modal.remote`) when the session opens; nothing else
tests the kind.

``EphemeralTransport``
    Joins (or starts) this process's one run of ``modal_app.app``
    (:data:`APP_RUN`); a first run builds the images.
``DeployedTransport``
    Looks the classes and functions up in ``modal deploy``'s app, after
    checking once per session that the deployed app speaks this client's
    :data:`~colbert_modal.remote.API_VERSION` (else "redeploy").
``InProcessTransport``
    Runs the same Modal bodies here through ``.local()``, arguments and
    results through a cloudpickle round trip as on the wire, with
    ``$COLBERT_MODAL_VOLUME_PATH`` standing in for the Volume.

Every transport does the same four things: connect (showing it on a
progress stage), look up a handle (with ``with_options``), call a method
(``.remote`` or ``.local``), stream a generator method (``.remote_gen``),
and open the Volume's files; :meth:`Transport.call_aio` is the awaitable call
(``.remote.aio``) of the ``.aio`` methods. modal is imported inside functions only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError, RemoteError, RemoteUnavailableError
from ..progress import Stage
from . import API_VERSION, APP_NAME, KINDS, VOLUME_NAME
from .build_log import build_error, watching
from .connection import DEPLOY_HINT, check_credentials, probe_server, translate_error, translated
from .server import volume_path
from .volumes import DirectoryVolume, ModalVolume, VolumeFiles

__all__ = [
    "APP_RUN",
    "DeployedTransport",
    "EphemeralTransport",
    "InProcessTransport",
    "SharedAppRun",
    "Transport",
    "transport_for",
]


def _roundtrip(obj: Any) -> Any:
    """What the other side of the wire receives: a cloudpickle round trip."""
    import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(obj))


class SharedAppRun:
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


APP_RUN = SharedAppRun()


def _image_labels() -> list[tuple[str, tuple[str, ...]]]:
    """How the app's images show in their build steps: the lock each installs, their bases (first match wins)."""
    from .. import modal_app

    return [
        ("OCR image", (modal_app.OCR_IMAGE_LOCK.name,)),
        ("client image", (modal_app.CLIENT_IMAGE_LOCK.name, "-slim-")),
        ("GPU image", (modal_app.IMAGE_LOCK.name, "nvidia/cuda", "apt-get", "ENTRYPOINT", "TORCH_CUDA_ARCH_LIST")),
    ]


class Transport:
    """How one session reaches the app. Subclasses set :attr:`kind` and override what differs."""

    kind: str = ""
    #: whether the app's settings (GPU lists, timeouts) are this process's ``modal_app`` (not a deployed one)
    knows_app_settings = True
    #: whether the app's bodies run in this process (``.local()``: ``with_options`` does not apply, and
    #: a local checkpoint directory is visible to them)
    runs_here = False

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose
        self.connected = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def connect(self, stage: Stage | None = None) -> None:
        """Make the app reachable (shown on ``stage`` where given); idempotent. Sets :attr:`connected`."""
        raise NotImplementedError  # pragma: no cover - interface

    def lookup(self, name: str, *, cls: bool) -> Any:
        """The handle of a class or function of the app."""
        from .. import modal_app

        return getattr(modal_app, name)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn.remote(*args, **kwargs)

    def stream(self, fn: Any, *args: Any, **kwargs: Any) -> Iterable[Any]:
        return fn.remote_gen(*args, **kwargs)

    def map(self, fn: Any, inputs: list[Any]) -> list[Any]:
        """``fn`` over ``inputs`` in parallel containers (``.map``): outputs in order, an exception for a failed one."""
        return list(fn.map(inputs, order_outputs=True, return_exceptions=True))

    async def call_aio(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call` awaited on the caller's loop: modal's own ``.remote.aio`` (no thread)."""
        return await fn.remote.aio(*args, **kwargs)

    def volume(self) -> VolumeFiles:
        import modal

        return ModalVolume(modal.Volume.from_name(VOLUME_NAME, create_if_missing=True))

    def close(self) -> None:
        self.connected = False


class EphemeralTransport(Transport):
    """This process's shared run of ``modal_app.app`` (``app.run()``)."""

    kind = "ephemeral"

    def __init__(self, *, verbose: bool = False) -> None:
        check_credentials()
        probe_server()
        super().__init__(verbose=verbose)

    @property
    def needs_start(self) -> bool:
        """Whether connecting would start the app run (and maybe build the images)."""
        return not self.connected and not APP_RUN.running

    def connect(self, stage: Stage | None = None) -> None:
        if not self.connected:
            APP_RUN.acquire(verbose=self.verbose, stage=stage)
            self.connected = True

    def close(self) -> None:
        if self.connected:
            self.connected = False
            APP_RUN.release()


class DeployedTransport(Transport):
    """``modal deploy``'s app, looked up by name; its version checked once, at :meth:`connect`."""

    kind = "deployed"
    knows_app_settings = False

    def __init__(self, *, verbose: bool = False) -> None:
        check_credentials()
        probe_server()
        super().__init__(verbose=verbose)
        #: the deployed app's API version, once checked
        self.app_version: int | None = None

    def lookup(self, name: str, *, cls: bool) -> Any:
        import modal

        return (modal.Cls.from_name if cls else modal.Function.from_name)(APP_NAME, name)

    def connect(self, stage: Stage | None = None) -> None:
        if self.connected:
            return
        self.app_version = self.check_version()
        self.connected = True

    def check_version(self) -> int:
        """The deployed app's API version; RemoteError ("redeploy") unless it is this client's."""
        import modal.exception

        what = f"checking the deployed Modal app {APP_NAME!r}"
        try:
            with translated(what):
                version = int(self.lookup("app_version", cls=False).remote())
        except RemoteUnavailableError as exc:
            if not isinstance(exc.__cause__, modal.exception.NotFoundError):
                raise
            # no app_version: an app deployed by a release before versions, or no app at all
            # (Modal's not-found text is the same for both, so ask for a function every release has)
            try:
                with translated(what):
                    self.lookup("manifest", cls=False).hydrate()
            except RemoteUnavailableError as missing:
                if isinstance(missing.__cause__, modal.exception.NotFoundError):
                    raise RemoteUnavailableError(
                        f"there is no deployed Modal app {APP_NAME!r} in this Modal environment: "
                        f"{DEPLOY_HINT}, or use remote_app='ephemeral'"
                    ) from missing
                raise
            version = 1
        if version < API_VERSION:
            raise RemoteError(
                f"the deployed Modal app {APP_NAME!r} was deployed by an older colbert-modal (app version "
                f"{version}, this client needs {API_VERSION}); redeploy: colbert-modal deploy"
            )
        if version > API_VERSION:
            raise RemoteError(
                f"the deployed Modal app {APP_NAME!r} was deployed by a newer colbert-modal (app version "
                f"{version}, this client speaks {API_VERSION}); upgrade colbert-modal here, or redeploy: "
                "colbert-modal deploy"
            )
        return version


class InProcessTransport(Transport):
    """The app's bodies run here (``.local()``), over a cloudpickle round trip; a folder is the Volume."""

    kind = "inprocess"
    runs_here = True

    def connect(self, stage: Stage | None = None) -> None:
        """Nothing to connect to (and so never :attr:`connected`: each update shows its instant "connecting")."""

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _roundtrip((args, kwargs))
        return _roundtrip(fn.local(*args, **kwargs))

    def stream(self, fn: Any, *args: Any, **kwargs: Any) -> Iterable[Any]:
        args, kwargs = _roundtrip((args, kwargs))
        return (_roundtrip(item) for item in fn.local(*args, **kwargs))

    def map(self, fn: Any, inputs: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in inputs:
            try:
                out.append(_roundtrip(fn.local(_roundtrip(item))))
            except Exception as exc:
                out.append(exc)
        return out

    async def call_aio(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """The body runs here, so in a worker thread (on Modal it runs in the container)."""
        return await asyncio.to_thread(self.call, fn, *args, **kwargs)

    def volume(self) -> VolumeFiles:
        return DirectoryVolume(volume_path())


TRANSPORTS: dict[str, type[Transport]] = {
    "ephemeral": EphemeralTransport,
    "deployed": DeployedTransport,
    "inprocess": InProcessTransport,
}


def transport_for(kind: str, *, verbose: bool = False) -> Transport:
    """The transport of a session kind (credentials checked and the server probed, where it goes to Modal)."""
    if kind not in KINDS:
        raise ConfigurationError(f"remote session kind must be one of {KINDS}, got {kind!r}")
    return TRANSPORTS[kind](verbose=verbose)
