"""The ColBERT engine: backends, get_engine, Engine (build/open dispatch), the SearchIndex protocol.

Two index backends, both on ragatouille's ColBERT model:

``exact`` (:mod:`~colbert_modal.engine.exact`)
    Every chunk is encoded once with the checkpoint's document encoder
    (colbert-ai's ``Checkpoint.docFromText``, as loaded by ragatouille) and
    the token embeddings are stored (float16). Search is exact MaxSim over
    all of them. Updates encode only new chunks. Best up to tens of
    thousands of chunks: it indexes in one encoding pass, where PLAID
    encodes a k-means sample and then the whole collection again.

``plaid`` (:mod:`~colbert_modal.engine.plaid`)
    ragatouille's ``RAGPretrainedModel.index`` (colbert-ai PLAID: k-means
    centroids and compressed residuals). Compact and fast for large
    collections; approximate; every update rebuilds it. Each passage is
    encoded once, by our encoder, and GPU builds cluster with :func:`kmeans`
    (see :func:`~colbert_modal.engine.plaid.plaid_build_patches`).

``auto`` (the default) picks ``exact`` up to :data:`EXACT_MAX_CHUNKS` chunks,
``plaid`` above. The encoders' precision is described in
:mod:`~colbert_modal.engine.precision`.

The modules, each importing only those above it in this list:

- ``_upstream``: the only importer of ragatouille / colbert-ai (environment,
  quiet output, what the PLAID patches target);
- ``precision``: the precision setting, the autocast, the device probe;
- ``clustering``: :func:`kmeans` (torch only);
- ``query_encoder``: the lean query encoder (the checkpoint's BERT and head in
  torch, no ragatouille): what searching an exact index encodes queries with;
- ``encoder``: the loaded checkpoint (:class:`Encoder`) and fast document encoding;
- ``exact`` and ``plaid``: each backend's build, on-disk format and search;
- this package: :class:`Engine` (an encoder that builds and opens both) and
  :func:`get_engine`; it also re-exports what callers outside the package
  use, :func:`import_ragatouille` among them (to import it ahead of time).

Everything crossing the package's boundary is plain Python, numpy or our
pydantic models; ragatouille/colbert/torch errors become
:class:`~colbert_modal.errors.EngineError` or
:class:`~colbert_modal.errors.ModelLoadError` here. Importing the package
imports neither torch nor ragatouille: they load when first used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigurationError, EngineError
from ..progress import Progress, Stage
from . import exact, plaid
from ._upstream import colbert_config, import_ragatouille
from .clustering import kmeans
from .encoder import Encoder, shared_query_encodings
from .exact import ExactIndex, Reuse
from .exact import reuse_from as exact_reuse_from
from .plaid import PlaidIndex
from .precision import PRECISIONS, check_precision, cpu_has_fast_bf16, resolve_precision

__all__ = [
    "BACKENDS",
    "EXACT_MAX_CHUNKS",
    "PRECISIONS",
    "Encoder",
    "Engine",
    "ExactIndex",
    "Hits",
    "PlaidIndex",
    "Reuse",
    "SearchIndex",
    "check_precision",
    "choose_backend",
    "colbert_config",
    "cpu_has_fast_bf16",
    "exact_reuse_from",
    "get_engine",
    "import_ragatouille",
    "kmeans",
    "resolve_precision",
    "shared_query_encodings",
]

BACKENDS = ("auto", "exact", "plaid")
#: ``backend="auto"`` switches from exact to PLAID above this many chunks.
EXACT_MAX_CHUNKS = int(os.environ.get("COLBERT_MODAL_EXACT_MAX_CHUNKS", "10000"))

Hits = list[tuple[int, float]]  # (chunk position in the index, score), best first


class SearchIndex(Protocol):
    """An open index of either backend (:class:`ExactIndex`, :class:`PlaidIndex`)."""

    #: "exact" or "plaid"
    backend: str

    def __len__(self) -> int:
        """Chunks in the index."""
        ...

    def search(self, queries: Sequence[str], k: int, subset: Any = None) -> list[Hits]:
        """The ``k`` best hits of each query, best first.

        ``subset``: None (every chunk), or a sorted int array of the chunk
        positions to rank; then each query gets ``min(k, len(subset))`` hits,
        all from the subset (exact backend: exact MaxSim over the subset).
        """
        ...


def choose_backend(backend: str, n_chunks: int) -> str:
    """The backend an index of ``n_chunks`` chunks gets when ``backend`` is asked for ("auto" decides)."""
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "exact" if n_chunks <= EXACT_MAX_CHUNKS else "plaid"
    return backend


class Engine(Encoder):
    """A loaded ColBERT checkpoint that can encode, build and open indexes."""

    def build_plaid(
        self, texts: Sequence[str], ids: Sequence[str], dest: Path, *, max_tokens: int, progress: Progress | None = None
    ) -> None:
        """Build a PLAID index of ``texts`` under ``dest`` with ragatouille (``progress``: its stages)."""
        plaid.build(self, texts, ids, dest, max_tokens=max_tokens, progress=progress)

    def build_exact(
        self, texts: Sequence[str], dest: Path, *, max_tokens: int, reuse: Reuse | None = None,
        stage: Stage | None = None,
    ) -> None:
        """Encode ``texts`` (except those reused) and store an exact index in ``dest``.

        ``reuse`` (see :func:`exact_reuse_from`) is (embeddings, doclens,
        mapping): ``mapping[i]`` is the row of text ``i`` in the previous
        index, or -1 to encode it. ``stage`` counts the texts encoded.
        """
        exact.build(self, texts, dest, max_tokens=max_tokens, reuse=reuse, stage=stage)

    def open(self, engine_dir: Path, backend: str, texts: Sequence[str]) -> ExactIndex | PlaidIndex:
        """The index of ``backend`` stored in ``engine_dir``, whose chunks are ``texts``."""
        if backend == "exact":
            return ExactIndex(self, engine_dir)
        if backend == "plaid":
            return PlaidIndex(self, engine_dir, texts)
        raise EngineError(f"unknown index backend {backend!r} on disk")


_ENGINES: dict[tuple[str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(model: str | os.PathLike[str], *, verbose: bool = False, precision: str | None = None) -> Engine:
    """A process-wide cached :class:`Engine` per model and precision (loading costs seconds)."""
    key = (os.fspath(model), check_precision(precision))
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = Engine(model, verbose=verbose, precision=key[1])
        return eng
