"""colbert-ai and ragatouille: the only module that imports them (environment, quiet output, patch targets).

The rest of :mod:`colbert_modal.engine` reaches the two libraries through
here: :func:`import_ragatouille` (which first prepares the environment
colbert-ai needs, then defers its CPU extension's compile), :func:`quiet`
for their console output, and :func:`plaid_build_targets` for the objects
the PLAID build patches (:func:`colbert_modal.engine.plaid.plaid_build_patches`)
replace attributes on. Importing this module imports neither library.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

from ..errors import DependencyMissingError

__all__ = [
    "PlaidBuildTargets",
    "colbert_config",
    "extensions_dir",
    "import_ragatouille",
    "plaid_build_targets",
    "quiet",
]

logger = logging.getLogger(__name__)


def extensions_dir(root: str, cuda: bool) -> str:
    """Where colbert-ai's extensions for one device are compiled and cached, under ``root``.

    colbert-ai has two different extensions named ``decompress_residuals_cpp``
    (``indexing/codecs/residual.py`` with a ``.cu``, ``search/index_storage.py``
    with a ``.cpp`` only); in one ``TORCH_EXTENSIONS_DIR`` each build
    overwrites the other and the next load compiles it again (100-130 s of
    nvcc on a cold GPU container). One folder per device keeps both.
    """
    return os.path.join(root, "cuda" if cuda else "cpu")


def _prepare_environment() -> None:
    # Per-device extension caches where the Modal image asks for them (see extensions_dir).
    root = os.environ.get("COLBERT_MODAL_TORCH_EXTENSIONS_ROOT")
    if root:
        import torch

        os.environ["TORCH_EXTENSIONS_DIR"] = extensions_dir(root, bool(torch.cuda.is_available()))
    # colbert-ai imports GitPython, which fails without a git binary unless told to be quiet.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # colbert-ai compiles C++ extensions with ninja; a venv that is not
    # activated has it in its bin/ but not on PATH.
    import shutil
    import sys

    bindir = os.path.dirname(sys.executable)
    if shutil.which("ninja") is None and os.path.exists(os.path.join(bindir, "ninja")):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """colbert-ai and ragatouille print a lot even at verbose=0 and warn about
    things users cannot act on; keep both off the console (logged at DEBUG)."""
    with warnings.catch_warnings():
        # upstream chatter: "CUDA is not available ... Disabling autocast", deprecations
        warnings.simplefilter("ignore")
        if verbose:
            yield
            return
        buf_out, buf_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            yield
    noise = buf_out.getvalue() + buf_err.getvalue()
    if noise.strip():
        logger.debug("engine output:\n%s", noise[-4000:])


def import_ragatouille() -> Any:
    """The ``ragatouille`` module, imported quietly in the environment colbert-ai needs.

    Raises :class:`~colbert_modal.errors.DependencyMissingError` where the
    ``local`` extra is not installed.
    """
    _prepare_environment()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 0.0.10 / PyLate notice, deprecations
            with quiet():
                import ragatouille
    except ImportError as exc:
        raise DependencyMissingError(
            "local mode needs the ColBERT engine: pip install 'colbert-modal[local]' "
            f"(install torch first to pick CPU wheels), or use mode='remote'. ({exc})"
        ) from exc
    _defer_segmented_maxsim()
    return ragatouille


def _defer_segmented_maxsim() -> None:
    """Compile colbert-ai's ``segmented_maxsim`` C++ extension when it is first called.

    colbert-ai compiles it (ninja + a C++ compiler, ~30 s here) whenever it
    loads a model on a CPU and finds no cached build, but only PLAID's CPU
    search calls it: exact indexes and every encoding never do. Measured: 32 s
    of a 55 s first exact build was this compile.
    """
    from colbert.modeling.colbert import ColBERT

    if hasattr(ColBERT, "loaded_extensions"):
        return

    def segmented_maxsim(*args: Any) -> Any:
        with _EXTENSION_LOCK:
            if ColBERT.__dict__.get("segmented_maxsim") is _lazy:
                del ColBERT.loaded_extensions  # let colbert-ai load it for real
                ColBERT.try_load_torch_extensions(use_gpu=False)
        return ColBERT.segmented_maxsim(*args)

    _lazy = staticmethod(segmented_maxsim)
    ColBERT.segmented_maxsim = _lazy
    ColBERT.loaded_extensions = True


_EXTENSION_LOCK = threading.Lock()


class PlaidBuildTargets(NamedTuple):
    """The colbert-ai / ragatouille objects whose attributes the PLAID build patches replace."""

    #: ``CollectionEncoder``: its ``encode_passages`` is replaced
    collection_encoder: Any
    #: ``colbert.indexing.collection_indexer``: its ``compute_faiss_kmeans``
    collection_indexer: Any
    #: ``ragatouille.models.torch_kmeans``: its ``compute_pytorch_kmeans``
    rag_kmeans: Any
    #: ``ragatouille.models.index``: its ``time`` (for ``time.sleep``)
    rag_index: Any


def plaid_build_targets() -> PlaidBuildTargets:
    """What :func:`colbert_modal.engine.plaid.plaid_build_patches` patches (imports both libraries)."""
    import colbert.indexing.collection_indexer as collection_indexer
    import ragatouille.models.index as rag_index
    import ragatouille.models.torch_kmeans as rag_kmeans
    from colbert.indexing.collection_encoder import CollectionEncoder

    return PlaidBuildTargets(CollectionEncoder, collection_indexer, rag_kmeans, rag_index)


def colbert_config(**fields: Any) -> dict[str, Any]:
    """colbert-ai's full ``ColBERTConfig`` field set (``artifact.metadata``) with ``fields`` set."""
    _prepare_environment()
    from colbert.infra import ColBERTConfig

    return dict(ColBERTConfig(**fields).export())
