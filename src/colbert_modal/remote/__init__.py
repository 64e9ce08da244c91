"""Remote mode (Modal): the names both halves share; the halves live in ``client`` and ``server``.

``client``
    Runs on your machine, never imports torch: credentials, the Modal
    session, error translation, ``pull``/``push``. Takes what it needs as
    arguments (settings, plans, the session), never the indexer.
``server``
    Runs inside the Modal containers (:mod:`colbert_modal.modal_app`), or
    in this process through ``.local()``: applies update plans, adopts
    uploads, serves searches. Never imports modal.

How a remote call reaches Modal is a *session kind*:

``ephemeral`` (default)
    ``app.run()`` under the hood, opened on first use and shared by every
    remote indexer of the process until the last one is closed (or the
    interpreter exits). Nothing to deploy; every new run pays an app start
    and cold containers.
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
``inprocess``), ``COLBERT_MODAL_DEPLOYED=1``, or the indexer's
``remote_app``. Nothing in this package imports modal at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..progress import Event
from ..records import IndexReport

__all__ = [
    "API_VERSION",
    "APP_NAME",
    "IMAGE_TORCH",
    "KINDS",
    "UV_VERSION",
    "VOLUME_MOUNT",
    "VOLUME_NAME",
    "ApplyFinished",
    "ApplyItem",
    "ContainerStarted",
    "gpu_setting",
]

#: What the client and the app's bodies agree on (arguments, results, the Volume's layout). A deployed
#: app answers it from ``app_version``; a client refuses an app of another version once per session
#: ("redeploy"), so no call needs a shim for older apps. Bump it when a body's signature or reply changes.
#: 1: every release before versions (no ``app_version`` function); 2: this one.
API_VERSION = 2
#: The Modal app's name (``modal deploy`` publishes it under this name).
APP_NAME = "colbert-modal"
#: The Modal Volume that holds the remote indexes.
VOLUME_NAME = "colbert-modal-indexes"
#: Where the Volume is mounted in the containers.
VOLUME_MOUNT = "/indexes"
#: Session kinds, see above.
KINDS = ("ephemeral", "deployed", "inprocess")
#: The uv that resolved the image locks (``scripts/lock-image``) and installs them in the image.
UV_VERSION = "0.13.9"
#: torch in the GPU image: the PyPI wheel built for CUDA 12.8 (matches the image's nvcc).
IMAGE_TORCH = "torch==2.8.0"


def gpu_setting(value: str | None, default: str | list[str] | None) -> str | list[str] | None:
    """Parse a GPU setting as ``$COLBERT_MODAL_GPU`` and ``ColbertIndexer(gpu=...)`` take it.

    ``"A100"`` -> ``"A100"``; ``"L4,A10"`` -> ``["L4", "A10"]`` (a fallback
    list: Modal takes the first available); ``"cpu"`` or ``"none"`` -> None
    (no GPU); empty or None -> ``default``.
    """
    value = (value or "").strip()
    if not value:
        return default
    if value.lower() in ("cpu", "none"):
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names[0] if len(names) == 1 else names


# --- what ``Writer.apply_stream`` yields (the client reads it with ``.remote_gen()``) -----------------


@dataclass(frozen=True)
class ContainerStarted:
    """The first item: the container is up and the build begins."""


@dataclass(frozen=True)
class ApplyFinished:
    """The last item: the update's report."""

    report: IndexReport


#: One item of the stream: the container started, a stage's progress event, or the report.
ApplyItem = ContainerStarted | Event | ApplyFinished
