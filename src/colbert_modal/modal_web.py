"""The HTTP API and its search page (:mod:`colbert_modal.http`) as a web endpoint of the Modal app.

Deploy the app with it (instead of ``-m colbert_modal.modal_app``)::

    modal secret create colbert-modal-web COLBERT_MODAL_TOKEN=$(openssl rand -hex 16)
    COLBERT_MODAL_WEB=token modal deploy -m colbert_modal.modal_web

This module adds the function ``web`` to :data:`colbert_modal.modal_app.app`
(same app, same Volume): an ``@modal.asgi_app`` serving
:func:`colbert_modal.http.create_app` over the Volume's indexes, each search
answered by the :class:`~colbert_modal.modal_app.Searcher`'s warm containers.

``COLBERT_MODAL_WEB`` at deploy time picks the authentication:

``token`` (default)
    every call but ``/``, ``/healthz`` and ``/openapi.json`` needs
    ``Authorization: Bearer $COLBERT_MODAL_TOKEN``, the token kept in the
    modal.Secret named by ``COLBERT_MODAL_WEB_SECRET`` (default
    ``colbert-modal-web``); the search page asks for it once.
``proxy``
    Modal's proxy auth: every request needs the ``Modal-Key`` and
    ``Modal-Secret`` headers of a proxy auth token (workspace settings); no
    bearer token. Suits programs; a plain browser cannot send those headers.
``off``
    no endpoint.
"""

# No `from __future__ import annotations` here: Modal's decorators read real annotations.

import asyncio
import logging
import os
import threading
import time

import modal

from colbert_modal.errors import ConfigurationError
from colbert_modal.http import Indexes, create_app
from colbert_modal.modal_app import (
    CLIENT_IMAGE_LOCK,
    MINUTES,
    UV_VERSION,
    VOLUME_PATH,
    Searcher,
    app,
    reload_volume,
    server,
    volume,
)
from colbert_modal.remote.connection import translated

__all__ = ["WEB", "WEB_SECRET", "app", "web_app"]

WEB = (os.environ.get("COLBERT_MODAL_WEB") or "token").strip().lower()
WEB_SECRET = os.environ.get("COLBERT_MODAL_WEB_SECRET") or "colbert-modal-web"
if WEB not in ("off", "token", "proxy"):
    raise ValueError(f"COLBERT_MODAL_WEB must be off, token or proxy; got {WEB!r}")
#: The serve extra, pinned, on top of the client image's lock.
WEB_REQUIREMENTS = ["starlette==1.10.0", "anyio==4.16.0"]


class _Aio:
    def __init__(self, fn):
        self.aio = fn


logger = logging.getLogger(__name__)

#: Seconds between the reloads a request for an index not in the container's view makes (unknown names
#: cannot make a reload each).
MISS_RELOAD_INTERVAL = 1.0


class SearcherIndex:
    """One index as :mod:`colbert_modal.http` serves it, searched by the Searcher (``.local()`` outside Modal)."""

    def __init__(self, name, indexes):
        self.name = name
        searcher = Searcher(index_name=name)  # type: ignore[call-arg]  # modal.parameter() fields

        async def search_batch(queries, k=10, where=None, **how):  # how: mode, keyword_weight
            if modal.is_local():
                return await asyncio.to_thread(searcher.search_batch.local, queries, k, where=where, **how)
            with translated(f"searching {name!r}"):  # Modal's errors as ours: a timeout 504, unavailable 503
                return await searcher.search_batch.remote.aio(queries, k, where=where, **how)

        async def info():
            return await asyncio.to_thread(indexes.read_info, name)

        self.search_batch, self.info = _Aio(search_batch), _Aio(info)

    def close(self):
        pass


class VolumeIndexes(Indexes):
    """The indexes on the Volume as this container sees them, after a reload; each searched through
    :class:`SearcherIndex`.

    The endpoint takes concurrent requests (``@modal.concurrent``) in one container, whose Volume reload
    refuses while a file of the Volume is open: this container's Volume reads and reloads take turns. A
    failed reload serves the view as it was."""

    def __init__(self, root, names, options):
        super().__init__(root, names, options)
        self._volume = threading.Lock()
        self._missed_at = float("-inf")

    def _reload(self):
        try:
            reload_volume()
        except Exception as exc:
            logger.warning("Volume reload failed (%s: %s); answering from this container's view",
                           type(exc).__name__, exc)

    def available(self):
        with self._volume:
            self._reload()  # indexes published since this container started
            return super().available()

    def exists(self, name):
        """Whether ``name`` is on the Volume; a name not in this container's view is looked for again after a
        reload (published since it last looked), at most every :data:`MISS_RELOAD_INTERVAL` seconds."""
        with self._volume:
            if super().exists(name):
                return True
            if time.monotonic() - self._missed_at < MISS_RELOAD_INTERVAL:
                return False
            # called on the event loop (http's Indexes.get): the blocking reload runs in a thread of its own
            worker = threading.Thread(target=self._reload, name="colbert-modal-web-reload", daemon=True)
            worker.start()
            worker.join()
            self._missed_at = time.monotonic()
            return super().exists(name)

    def read_info(self, name):
        """The published index's :class:`~colbert_modal.records.IndexInfo`, after a reload."""
        with self._volume:
            self._reload()
            return server.read_info(self.root, name)

    def make(self, name):
        return SearcherIndex(name, self)


def web_app(token=None):
    """The body of the ``web`` endpoint: the HTTP API over the Volume's indexes.

    ``token``: the bearer token (default ``$COLBERT_MODAL_TOKEN``, from the
    Secret); in ``token`` mode it refuses to start without one.
    """
    token = token or (os.environ.get("COLBERT_MODAL_TOKEN") if WEB == "token" else None)
    if WEB == "token" and not token:
        raise ConfigurationError(f"the modal.Secret {WEB_SECRET!r} must hold COLBERT_MODAL_TOKEN")
    return create_app(token=token or "", indexes=VolumeIndexes(server.volume_path(), None, {}))


if WEB != "off":
    web_image = (
        modal.Image.debian_slim(python_version="3.11")
        .uv_pip_install(requirements=[str(CLIENT_IMAGE_LOCK)], uv_version=UV_VERSION)
        .uv_pip_install(*WEB_REQUIREMENTS, uv_version=UV_VERSION)
        .env({"TOKENIZERS_PARALLELISM": "false"})
        .add_local_python_source("colbert_modal")
    )
    web_secrets = [modal.Secret.from_name(WEB_SECRET, required_keys=["COLBERT_MODAL_TOKEN"])] if WEB == "token" else []

    @app.function(image=web_image, volumes={VOLUME_PATH: volume}, secrets=web_secrets, scaledown_window=5 * MINUTES)
    @modal.concurrent(max_inputs=32)
    @modal.asgi_app(requires_proxy_auth=WEB == "proxy")
    def web():
        return web_app()
