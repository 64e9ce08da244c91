"""colbert-ai and ragatouille: the only module that imports them (environment, quiet output, patch targets).

The rest of :mod:`colbert_modal.engine` reaches the two libraries through
here: :func:`import_ragatouille` (which first prepares the environment
colbert-ai needs, then defers its CPU extension's compile), :func:`quiet`
for their console output, :func:`index_checkpoint` to open a PLAID index
with a checkpoint at another path than the one it records, and
:func:`plaid_build_targets` for the objects the PLAID build patches
(:func:`colbert_modal.engine.plaid.plaid_build_patches`) replace attributes
on. Importing this module imports neither library.

What the two libraries are given, once, as their modules load: our
``print`` and a quiet ``tqdm`` (:func:`quiet`), torch's ``cpp_extension.load``
behind the stale-lock guard (:mod:`~colbert_modal.engine.extensions`), a
``torch.load`` that reads PLAID index files as tensors only, and a
``MixedPrecisionManager`` that does not warn. No process-wide warning
filter is added: the host's ``warnings.filters`` stay as they are.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DependencyMissingError
from . import extensions

__all__ = [
    "PlaidBuildTargets",
    "colbert_config",
    "extensions_dir",
    "import_ragatouille",
    "index_checkpoint",
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
            _guard_module(name, namespace)
            _patched.add(name)


#: colbert-ai modules that ``torch.load`` the files of a PLAID index (centroids,
#: buckets, residuals, codes, ivf): there ``torch`` is :class:`_IndexFileTorch`.
_INDEX_READERS = frozenset({
    "colbert.search.index_loader",
    "colbert.indexing.codecs.residual",
    "colbert.indexing.codecs.residual_embeddings",
    "colbert.indexing.index_manager",
    "colbert.indexing.collection_indexer",
    "colbert.index_updater",
})


def _guard_module(name: str, namespace: dict[str, Any]) -> None:
    """An upstream module's extension compiles go through the stale-lock guard
    (:func:`~colbert_modal.engine.extensions.guarded`); its index files load as tensors only."""
    ext = sys.modules.get("torch.utils.cpp_extension")
    if ext is not None and namespace.get("load") is getattr(ext, "load", ext):
        namespace["load"] = extensions.guarded(namespace["load"])
    if name in _INDEX_READERS and isinstance(namespace.get("torch"), types.ModuleType):
        namespace["torch"] = _IndexFileTorch(namespace["torch"])


class _IndexFileTorch(types.ModuleType):
    """``torch`` as colbert-ai's PLAID index readers see it: ``load`` reads tensors, never code.

    colbert-ai calls ``torch.load(path, map_location='cpu')``, which unpickles
    anything on a torch before 2.6 (or with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    set); index files come from Volumes other people write. Here every load
    is ``weights_only=True``, and a file that holds more than tensors raises
    :class:`~colbert_modal.errors.IndexStorageError` naming it.
    """

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self.__dict__["_real"] = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_real"], name)

    def load(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        import pickle

        kwargs["weights_only"] = True
        try:
            return self.__dict__["_real"].load(f, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            from ..store import damaged_error

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise damaged_error(
                Path(os.fspath(f)) if isinstance(f, (str, os.PathLike)) else Path(str(f)),
                f"it holds more than tensors and was not loaded ({first[:200]})",
            ) from exc


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """colbert-ai and ragatouille print a lot even at verbose=0: keep their
    output off the console (logged at DEBUG on this module's logger) unless
    ``verbose``, without replacing the process's streams or touching the
    warning filters (thread-safe)."""
    _silence_upstream_modules()
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
                # Once, at import, under the load lock: the 0.0.10 / PyLate notice and
                # import-time deprecations. (catch_warnings swaps the process's filter
                # list for a copy and puts the original back: the host's filters are
                # unchanged afterwards.)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import ragatouille
            import ragatouille
    except ImportError as exc:
        raise DependencyMissingError(
            "local mode needs the ColBERT engine: pip install 'colbert-modal[local]' "
            f"(install torch first to pick CPU wheels), or use mode='remote'. ({exc})"
        ) from exc
    _defer_segmented_maxsim()
    _quiet_mixed_precision()
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


def _quiet_mixed_precision() -> None:
    """colbert-ai's ``MixedPrecisionManager`` on ``torch.amp``, enabled only where CUDA is.

    As shipped it calls ``torch.cuda.amp.GradScaler()`` / ``autocast()``:
    deprecated (a FutureWarning at every checkpoint load and encoding) and,
    without CUDA, disabled with a "CUDA is not available" warning. The same
    objects from ``torch.amp``, with ``enabled`` saying whether CUDA is there,
    behave the same and warn about nothing, so no process-wide warning filter
    is needed.
    """
    from colbert.utils import amp

    manager = amp.MixedPrecisionManager
    if getattr(manager, "colbert_modal_quiet", False):
        return

    def __init__(self: Any, activated: bool) -> None:
        import torch

        self.activated = activated
        if activated:
            self.scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())

    def context(self: Any) -> Any:
        import torch

        if not self.activated:
            return contextlib.nullcontext()
        return torch.amp.autocast("cuda", enabled=torch.cuda.is_available())

    manager.__init__ = __init__
    manager.context = context
    manager.colbert_modal_quiet = True


#: (index folder, checkpoint) for :func:`index_checkpoint`, in this context.
_INDEX_CHECKPOINT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "colbert_modal_index_checkpoint", default=None
)


@contextlib.contextmanager
def index_checkpoint(index_path: str | os.PathLike[str], checkpoint: str) -> Iterator[None]:
    """Within the block (this thread), colbert-ai reads the PLAID index at ``index_path`` as
    built with the checkpoint at ``checkpoint``, whatever path its ``metadata.json`` records.

    colbert-ai records the checkpoint's absolute path and reopens it from
    there; an index built in a Modal container, or pulled, names a path
    that is not here. The index's files are never written (a published,
    checksummed generation stays as it is): the path is replaced in the
    config colbert-ai loads, in memory.
    """
    _prepare_environment()
    from colbert.infra import ColBERTConfig

    with _PATCH_LOCK:
        if not getattr(ColBERTConfig.load_from_index, "colbert_modal_override", False):
            original = ColBERTConfig.load_from_index.__func__

            def load_from_index(cls: Any, path: Any) -> Any:
                config = original(cls, path)
                override = _INDEX_CHECKPOINT.get()
                if override is not None and os.path.realpath(os.fspath(path)) == override[0]:
                    config.configure(checkpoint=override[1])
                return config

            load_from_index.colbert_modal_override = True  # type: ignore[attr-defined]
            ColBERTConfig.load_from_index = classmethod(load_from_index)
    token = _INDEX_CHECKPOINT.set((os.path.realpath(os.fspath(index_path)), checkpoint))
    try:
        yield
    finally:
        _INDEX_CHECKPOINT.reset(token)


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
