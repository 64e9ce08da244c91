"""Model names to local checkpoint directories: the hub cache, then a download (no torch here).

Offline, the hub client retries a request five times with backoff (23 s)
and logs each try. Here "offline" is decided once, fast: ``HF_HUB_OFFLINE``,
or a TCP connection to the hub's host (or the proxy for it) that does not
open within :data:`PROBE_TIMEOUT_S` seconds; the answer is kept for
:data:`PROBE_TTL_S` seconds per process. A model not in the local cache then
fails at once with :class:`~colbert_modal.errors.ModelLoadError`. The hub
client's retry messages in our calls go to this module's logger at DEBUG,
not to the terminal (a filter on its loggers, active only inside our calls).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ModelLoadError

__all__ = ["DEFAULT_MODEL", "PROBE_TIMEOUT_S", "PROBE_TTL_S", "hub_unreachable", "resolve_hub_file", "resolve_model"]

logger = logging.getLogger(__name__)

#: Seconds the reachability probe of the hub waits for DNS and a TCP connection
#: (``$COLBERT_MODAL_HUB_PROBE_TIMEOUT``).
PROBE_TIMEOUT_S = 5.0
#: Seconds a probe's answer is kept in this process.
PROBE_TTL_S = 60.0
#: The hub client's loggers whose messages, inside our calls, go to DEBUG here.
_CHATTY = ("huggingface_hub.utils._http", "huggingface_hub.file_download", "huggingface_hub._snapshot_download",
           "urllib3.connectionpool")

#: The model used when neither the caller, the index nor ``$COLBERT_MODAL_MODEL`` names one.
DEFAULT_MODEL = "colbert-ir/colbertv2.0"

_OFFLINE_HINT = (
    "If this machine is offline, download the checkpoint once elsewhere "
    "(`huggingface-cli download {model} --local-dir ./colbertv2.0`) and pass "
    "model='/path/to/colbertv2.0', or set COLBERT_MODAL_MODEL to that directory."
)


_probes: dict[tuple[str, int], tuple[float, str | None]] = {}
_probes_lock = threading.Lock()


def _probe_target() -> tuple[str, int] | None:
    """(host, port) a request to the hub connects to first: the proxy for it, or the hub's host."""
    import urllib.request

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    if not url.hostname:
        return None
    scheme = url.scheme or "https"
    proxy = None if urllib.request.proxy_bypass(url.hostname) else urllib.request.getproxies().get(scheme)
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else url
    if not target.hostname:
        return None
    default = 443 if (target.scheme or scheme) == "https" else 80
    try:
        return target.hostname, target.port or default
    except ValueError:  # a malformed port: let the hub client say so
        return None


def _connect(target: tuple[str, int], timeout: float) -> str | None:
    """None if a TCP connection to ``target`` opens within ``timeout`` seconds (DNS included), else why not."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    # getaddrinfo takes no timeout: run it where it can be left behind
    worker = threading.Thread(target=attempt, name="colbert-modal-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from this process, or None where it may be.

    ``HF_HUB_OFFLINE`` set: offline. Otherwise a TCP connection to the hub's
    host (or to the proxy for it), given :data:`PROBE_TIMEOUT_S` seconds;
    the answer is kept :data:`PROBE_TTL_S` seconds.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    target = _probe_target()
    if target is None:
        return None
    with _probes_lock:
        cached = _probes.get(target)
        if cached is not None and time.monotonic() - cached[0] < PROBE_TTL_S:
            return cached[1]
        try:
            timeout = float(os.environ.get("COLBERT_MODAL_HUB_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
        except ValueError:
            timeout = PROBE_TIMEOUT_S
        problem = _connect(target, timeout)
        if problem is not None:
            problem = f"cannot connect to {target[0]}:{target[1]} ({problem})"
            logger.debug("the Hugging Face hub is unreachable: %s", problem)
        _probes[target] = (time.monotonic(), problem)
        return problem


_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("colbert_modal_hub_call", default=False)


class _RetryChatter(logging.Filter):
    """Inside our hub calls, the hub client's log records go to our logger at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _IN_CALL.get():
            return True
        logger.debug("hub client: %s", record.getMessage())
        return False


_CHATTER = _RetryChatter()


@contextlib.contextmanager
def _hub_call() -> Iterator[None]:
    for name in _CHATTY:
        log = logging.getLogger(name)
        if _CHATTER not in log.filters:
            log.addFilter(_CHATTER)
    token = _IN_CALL.set(True)
    try:
        yield
    finally:
        _IN_CALL.reset(token)


def _unreachable_error(model: str, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"could not fetch model {model!r}: it is not in the local Hugging Face cache and the hub cannot be "
        f"reached ({problem}). " + _OFFLINE_HINT.format(model=model)
    )


def _hub_error(model: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not fetch model {model!r} from the Hugging Face hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        + _OFFLINE_HINT.format(model=model)
    )


def resolve_model(model: str | os.PathLike[str]) -> str:
    """Absolute path of a local checkpoint directory for ``model``.

    A local directory is returned as an absolute path (relative paths make
    colbert-ai try the hub first). A hub id is looked up in the local cache
    first, then downloaded; either way the result is a local snapshot
    directory, so colbert-ai never talks to the hub itself. Where the model
    is not cached and the hub cannot be reached (:func:`hub_unreachable`),
    raises :class:`~colbert_modal.errors.ModelLoadError` at once.
    """
    raw = os.fspath(model)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path.absolute()}: not a checkpoint directory (no config.json)")
        return str(path.absolute())
    if path.is_absolute() or raw.startswith((".", "~")) or raw.count("/") > 1:
        raise ModelLoadError(f"model {raw!r}: no such checkpoint directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("huggingface_hub is required to fetch models by name") from exc
    return _cache_then_hub(raw, functools.partial(snapshot_download, raw))


def resolve_hub_file(model: str, filename: str) -> str:
    """Local path of one file of a hub model (cache first, then download where the hub can be reached)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("huggingface_hub is required to fetch models by name") from exc
    return _cache_then_hub(model, functools.partial(hf_hub_download, model, filename))


def _cache_then_hub(model: str, fetch: Callable[..., str]) -> str:
    """``fetch()`` from the local cache; else, where the hub can be reached (decided once), from the hub."""
    with _hub_call():
        try:
            return fetch(local_files_only=True)
        except Exception:
            pass
        problem = hub_unreachable()
        if problem is not None:
            raise _unreachable_error(model, problem)
        try:
            return fetch()
        except Exception as exc:
            raise _hub_error(model, exc) from exc
