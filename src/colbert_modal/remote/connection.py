"""Credentials, reachability and error mapping for Modal: what every remote call checks first.

:func:`check_credentials` mirrors the modal client's own verdict (token
pair, OAuth settings, profiles) without printing a secret;
:func:`probe_server` races the client's API hosts with a short timeout;
:func:`translated` turns the client's exceptions into our error tree.
modal is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from urllib.parse import urlparse

from ..errors import (
    ColbertModalError,
    ModalCredentialsError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

__all__ = [
    "CREDENTIALS_HELP",
    "DEPLOY_HINT",
    "check_credentials",
    "credential_source",
    "probe_server",
    "probe_targets",
    "server_urls",
    "translate_error",
    "translated",
]


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


def credential_source() -> str:
    """Where the credentials that :func:`check_credentials` accepted come from (never their values)."""
    import modal.config as mconfig

    profile = getattr(mconfig, "_profile", "default")
    in_file = profile in getattr(mconfig, "_user_config", {})
    kind = "OAuth" if mconfig.config.get("oauth_client_id") else "token"
    names = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET") if kind == "token" else ("MODAL_OAUTH_CLIENT_ID",)
    if any(n in os.environ for n in names) or not in_file:
        return f"{kind} from the environment ({', '.join(n for n in names if n in os.environ) or 'MODAL_*'})"
    return f"{kind} from profile {profile!r} of {getattr(mconfig, 'user_config_path', '~/.modal.toml')}"


def server_urls() -> list[str]:
    """The Modal API URLs the client will try: the active setting, split as the client splits it."""
    import modal.config as mconfig

    value = str(mconfig.config.get("server_url") or "")
    return [u.strip() for u in value.split(",") if u.strip()]


def probe_targets() -> list[tuple[str, int]]:
    """``(host, port)`` of each Modal API URL the client will try (malformed ones are left to the client)."""
    targets = []
    for url in server_urls():
        parsed = urlparse(url)
        if parsed.hostname:
            targets.append((parsed.hostname, parsed.port or (443 if parsed.scheme in ("https", "grpcs") else 80)))
    return targets


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
    targets = probe_targets()
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


def translate_error(exc: BaseException, what: str, *, limit: float | None = None) -> ColbertModalError:
    """The colbert_modal error for an exception raised by a remote call (``limit``: its timeout, if known)."""
    if isinstance(exc, ColbertModalError):
        return exc
    import modal.exception as mexc

    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, mexc.AuthError):
        return ModalCredentialsError(f"{what}: Modal refused the credentials ({detail}). {CREDENTIALS_HELP}")
    if isinstance(exc, mexc.FunctionTimeoutError):  # before TimeoutError: it subclasses it
        limit_text = f"{limit:g} s" if limit else "the limit set at deploy time"
        return RemoteTimeoutError(
            f"{what} ran past its time limit on Modal ({limit_text}; {detail}). Raise the limit with "
            "ColbertIndexer(remote_timeout=seconds) or $COLBERT_MODAL_TIMEOUT, or index fewer files per call."
        )
    if isinstance(exc, mexc.NotFoundError):
        return RemoteUnavailableError(f"{what}: {detail}. With COLBERT_MODAL_REMOTE_APP=deployed, {DEPLOY_HINT}.")
    if isinstance(exc, (mexc.ConnectionError, ConnectionError, TimeoutError, mexc.TimeoutError)):
        return RemoteUnavailableError(f"{what}: Modal cannot be reached ({detail})")
    return RemoteError(f"{what} failed on Modal ({detail})")


@contextlib.contextmanager
def translated(what: str, *, limit: float | None = None) -> Iterator[None]:
    """Turn any non-library exception raised inside into our error tree (original as ``__cause__``)."""
    try:
        yield
    except ColbertModalError:
        raise
    except Exception as exc:
        raise translate_error(exc, what, limit=limit) from exc
