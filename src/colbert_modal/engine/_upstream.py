"""colbert-ai and ragatouille: the only module that imports them (environment, quiet output, patch targets).

The rest of :mod:`colbert_modal.engine` reaches the two libraries through
here: :func:`import_ragatouille` (which first prepares the environment
colbert-ai needs, then defers its CPU extension's compile), :func:`quiet`
for their console output, and :func:`plaid_build_targets` for the objects
the PLAID build patches (:func:`colbert_modal.engine.plaid.plaid_build_patches`)
replace attributes on. Importing this module imports neither library.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import logging
import os
import sys
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
    "load_lock",
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


#: Whether upstream output in this context goes to the console (``quiet(verbose=True)``).
_VERBOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("colbert_modal_upstream_verbose", default=False)
_UPSTREAM = ("colbert", "ragatouille")
_patched: set[str] = set()
_modules_seen = 0
_PATCH_LOCK = threading.Lock()


def _upstream_print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    """``print`` as colbert-ai and ragatouille see it: logged at DEBUG unless verbose."""
    if file is not None or _VERBOSE.get():
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
    elif logger.isEnabledFor(logging.DEBUG):
        logger.debug("engine output: %s", (sep if sep is not None else " ").join(map(str, args)).rstrip())


def _upstream_tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.tqdm`` as colbert-ai sees it: no bar unless verbose."""
    import tqdm

    if not _VERBOSE.get():
        kwargs["disable"] = True
    return tqdm.tqdm(*args, **kwargs)


def _silence_upstream_modules() -> None:
    """Give every loaded colbert-ai / ragatouille module our ``print`` (and a
    quiet ``tqdm``): their console output goes to our logger, while the
    process's ``sys.stdout`` / ``sys.stderr`` are never touched (other
    threads keep printing; the app's streams stay its own)."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return  # nothing imported since the last pass
    with _PATCH_LOCK:
        _modules_seen = len(sys.modules)
        for name, module in list(sys.modules.items()):
            if name in _patched or module is None or name.split(".", 1)[0] not in _UPSTREAM:
                continue
            namespace = getattr(module, "__dict__", None)
            if namespace is None:
                continue
            namespace["print"] = _upstream_print
            tq = namespace.get("tqdm")
            if getattr(tq, "__name__", None) == "tqdm" and getattr(tq, "tqdm", None) is not None:
                import types

                namespace["tqdm"] = types.SimpleNamespace(tqdm=_upstream_tqdm, **{
                    k: getattr(tq, k) for k in ("trange", "auto") if hasattr(tq, k)})
            elif isinstance(tq, type) and tq.__name__ == "tqdm":
                namespace["tqdm"] = _upstream_tqdm
            _patched.add(name)


def _ignore_upstream_warnings() -> None:
    """Warnings users cannot act on ("CUDA is not available ... Disabling autocast",
    upstream deprecations): filtered by module and message. Re-adding a filter
    that is there already only moves it first, so each :func:`quiet` does it
    (an app or a test runner may have reset the filters since);
    ``warnings.catch_warnings`` would swap the process-wide filters and is
    not thread-safe."""
    warnings.filterwarnings("ignore", module=r"(colbert|ragatouille)(\.|$)")
    warnings.filterwarnings("ignore", message=r".*CUDA is not available")
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\..* is deprecated")


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """colbert-ai and ragatouille print a lot even at verbose=0: keep their
    output off the console (logged at DEBUG on this module's logger) unless
    ``verbose``, without replacing the process's streams (thread-safe)."""
    _silence_upstream_modules()
    _ignore_upstream_warnings()
    token = _VERBOSE.set(verbose)
    try:
        yield
    finally:
        _VERBOSE.reset(token)


_LOAD_LOCK = threading.RLock()


def load_lock() -> threading.RLock:
    """The process-wide lock every checkpoint load holds.

    transformers builds models under a process-global patch (weights first
    created on the ``meta`` device); two loads at once in two threads mix
    their patches ("Cannot copy out of meta tensor") and can leave the patch
    in place for every later load. One load at a time avoids both.
    """
    return _LOAD_LOCK


def import_ragatouille() -> Any:
    """The ``ragatouille`` module, imported quietly in the environment colbert-ai needs.

    Raises :class:`~colbert_modal.errors.DependencyMissingError` where the
    ``local`` extra is not installed.
    """
    _prepare_environment()
    try:
        with _LOAD_LOCK:
            if "ragatouille" not in sys.modules:
                _ignore_upstream_warnings()
                with warnings.catch_warnings():  # once, at import: the 0.0.10 / PyLate notice, deprecations
                    warnings.simplefilter("ignore")
                    import ragatouille
            import ragatouille
    except ImportError as exc:
        raise DependencyMissingError(
            "local mode needs the ColBERT engine: pip install 'colbert-modal[local]' "
            f"(install torch first to pick CPU wheels), or use mode='remote'. ({exc})"
        ) from exc
    _defer_segmented_maxsim()
    _silence_upstream_modules()
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
