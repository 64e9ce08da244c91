"""The ColBERT engine: the only module that imports ragatouille (lazily).

Two index backends, both on ragatouille's ColBERT model:

``exact``
    Every chunk is encoded once with the checkpoint's document encoder
    (colbert-ai's ``Checkpoint.docFromText``, as loaded by ragatouille) and
    the token embeddings are stored (float16). Search is exact MaxSim over
    all of them. Updates encode only new chunks. Best up to tens of
    thousands of chunks: it indexes in one encoding pass, where PLAID
    encodes a k-means sample and then the whole collection again.

``plaid``
    ragatouille's ``RAGPretrainedModel.index`` (colbert-ai PLAID: k-means
    centroids and compressed residuals). Compact and fast for large
    collections; approximate; every update rebuilds it. Each passage is
    encoded once, by our encoder, and GPU builds cluster with :func:`kmeans`
    (see :func:`_plaid_build_patches`).

``auto`` (the default) picks ``exact`` up to :data:`EXACT_MAX_CHUNKS` chunks,
``plaid`` above.

Precision of the encoders (``precision=`` or ``$COLBERT_MODAL_PRECISION``):

``auto`` (the default)
    On a CUDA GPU, colbert-ai's own mixed precision (float16 autocast). On a
    CPU with AMX tiles (Intel Xeon 4th generation, "Sapphire Rapids", and
    later), bfloat16 autocast for exact indexes and for queries: oneDNN runs
    the encoder's matrix products on the tiles, ~2.5x faster than float32
    for batches (documents, query batches), the same for one short query.
    PLAID builds on a CPU and all encoding on other CPUs stay float32.
``fp32`` / ``bf16``
    Force float32 or bfloat16 autocast on any device.

Embeddings are stored as float16 either way; bfloat16 keeps 8 bits of
mantissa, so scores move in the third significant digit (see BENCHMARKS.md
for the effect on rankings). PLAID *searches* keep colbert-ai's precision.

Everything crossing this module's boundary is plain Python, numpy or our
pydantic models; ragatouille/colbert/torch errors become
:class:`~colbert_modal.errors.EngineError` or
:class:`~colbert_modal.errors.ModelLoadError` here.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .hub import resolve_model
from .errors import ConfigurationError, DependencyMissingError, EngineError, ModelLoadError

__all__ = [
    "BACKENDS",
    "EXACT_MAX_CHUNKS",
    "PRECISIONS",
    "Engine",
    "ExactIndex",
    "PlaidIndex",
    "choose_backend",
    "get_engine",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "exact", "plaid")
#: ``backend="auto"`` switches from exact to PLAID above this many chunks.
EXACT_MAX_CHUNKS = int(os.environ.get("COLBERT_MODAL_EXACT_MAX_CHUNKS", "10000"))

Hits = list[tuple[int, float]]  # (chunk position in the index, score), best first

PRECISIONS = ("auto", "fp32", "bf16")

#: PLAID builds on a CPU of at least this many chunks cluster with faiss's
#: CPU k-means (1.9x the speed of :func:`kmeans` on a CPU, same quality);
#: smaller ones, and every build on a GPU, with :func:`kmeans`. ragatouille's
#: own default (fast_pytorch_kmeans) is never used: it holds a centroids x
#: points mask, measured 10 GB RSS at 979 chunks and the OOM killer at 2,000
#: chunks on a 24 GB machine (BENCHMARKS.md).
FAISS_KMEANS_MIN_CHUNKS = 200


def choose_backend(backend: str, n_chunks: int) -> str:
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "exact" if n_chunks <= EXACT_MAX_CHUNKS else "plaid"
    return backend


def check_precision(precision: str | None) -> str:
    """``precision``, else ``$COLBERT_MODAL_PRECISION``, else ``"auto"``; validated."""
    value = precision or os.environ.get("COLBERT_MODAL_PRECISION") or "auto"
    if value not in PRECISIONS:
        where = "precision" if precision else "$COLBERT_MODAL_PRECISION"
        raise ConfigurationError(f"{where} must be one of {PRECISIONS}, got {value!r}")
    return value


def cpu_has_fast_bf16() -> bool:
    """True where this CPU has AMX tiles, on which oneDNN runs bfloat16 matmuls natively."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):  # pragma: no cover - older torch builds
        return False


def resolve_precision(precision: str | None, device: str, *, backend: str = "exact") -> str:
    """What the encoders run in on ``device`` ("cpu"/"cuda"): "fp32", "bf16" or "native".

    "native" leaves colbert-ai's own mixed precision (float16 autocast on CUDA).
    ``auto`` builds PLAID indexes on a CPU in float32: on top of PLAID's 2-bit
    residual compression, bfloat16 encodings measurably lowered top-10
    agreement with exact MaxSim below raw ragatouille's (BENCHMARKS.md,
    section 5); exact indexes and query encoding use bfloat16 where it is fast.
    """
    value = check_precision(precision)
    if value != "auto":
        return value
    if device != "cpu":
        return "native"
    if backend == "plaid":
        return "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


class _Autocast:
    """Stands in for colbert-ai's ``MixedPrecisionManager`` on a ``Checkpoint``.

    colbert-ai wraps every encoder forward (``Checkpoint.query``/``doc``) in
    ``checkpoint.amp_manager.context()``; replacing that object on our own
    checkpoint instances sets the precision exactly there and nowhere else.
    """

    activated = True

    def __init__(self, device: str, precision: str) -> None:
        self.device = device
        self.precision = precision

    def context(self) -> Any:
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _vectorised_mask(self: Any, input_ids: Any, skiplist: Any) -> Any:
    """colbert-ai's ``ColBERT.mask`` (token kept unless punctuation or padding)
    in numpy instead of a Python loop over every token."""
    import numpy as np

    ids = input_ids.cpu().numpy()
    skip = np.array([k for k in skiplist if isinstance(k, int)] or [-1], dtype=ids.dtype)
    return ~np.isin(ids, skip) & (ids != self.pad_token)


def _speed_up(ckpt: Any) -> None:
    """Give one of our colbert-ai ``Checkpoint`` instances the vectorised mask."""
    import types

    if getattr(ckpt.mask, "__func__", None) is not _vectorised_mask:
        ckpt.mask = types.MethodType(_vectorised_mask, ckpt)


def _checkpoint_device(ckpt: Any) -> str:
    try:
        return str(next(ckpt.parameters()).device.type)
    except (StopIteration, AttributeError):
        return "cpu"


def _doc_bsize(device: str) -> int:
    return 512 if device == "cuda" else 32


def _plaid_build_options(device: str, n_passages: int) -> dict[str, Any]:
    """The options our PLAID builds pass to ragatouille's build (``rag.index``)."""
    return {"use_faiss": device == "cpu" and n_passages >= FAISS_KMEANS_MIN_CHUNKS, "bsize": _doc_bsize(device)}


def _set_precision(ckpt: Any, precision: str | None, *, backend: str = "exact") -> str:
    """Apply ``precision`` to a colbert-ai ``Checkpoint``; returns what it resolved to."""
    device = _checkpoint_device(ckpt)
    resolved = resolve_precision(precision, device, backend=backend)
    if resolved != "native":
        ckpt.amp_manager = _Autocast(device, resolved)
    return resolved


def _prepare_environment() -> None:
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
def _quiet(verbose: bool = False) -> Iterator[None]:
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


def _import_ragatouille() -> Any:
    _prepare_environment()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 0.0.10 / PyLate notice, deprecations
            with _quiet():
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


def _doc_tokens(ckpt: Any, texts: list[str], maxlen: int) -> tuple[Any, Any] | None:
    """colbert-ai's ``DocTokenizer.tensorize`` ids as numpy: (ids [n, L], lengths [n]).

    ``[CLS] text [SEP]`` truncated to ``maxlen - 1`` tokens, then the
    ``[D]`` marker inserted after ``[CLS]``; rows padded with the pad id.
    None where the checkpoint's tokenizer is not a fast (Rust) one. Our own
    copy of the Rust tokenizer (its truncation settings are ours) is kept on
    the checkpoint.
    """
    import numpy as np

    doc_tok = ckpt.doc_tokenizer
    backend = getattr(doc_tok.tok, "backend_tokenizer", None)
    if backend is None:
        return None
    cached = getattr(ckpt, "_colbert_modal_doc_tok", None)
    if cached is None or cached[0] != maxlen:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(backend.to_str())
        tok.no_padding()
        tok.enable_truncation(max_length=maxlen - 1, strategy="longest_first",
                              direction=getattr(doc_tok.tok, "truncation_side", "right"))
        cached = ckpt._colbert_modal_doc_tok = (maxlen, tok)
    encodings = cached[1].encode_batch(texts, add_special_tokens=True)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.full((len(texts), int(lengths.max())), doc_tok.tok.pad_token_id, dtype=np.int64)
    for row, enc in zip(ids, encodings):
        e = enc.ids
        row[0] = e[0]
        row[1] = doc_tok.D_marker_token_id
        row[2 : len(e) + 1] = e[1:]
    return ids, lengths


def _encode_tokens(ckpt: Any, ids: Any, lengths: Any, bsize: int, dtype: Any = None) -> tuple[Any, Any]:
    """Document embeddings of tokenized texts: (numpy [n_tokens, dim], int32 [n_texts]).

    Texts are sorted by length and batched, each batch padded only to its own
    longest text; the output is in input order, float16 unless ``dtype``
    (a torch dtype) says otherwise.
    """
    import numpy as np
    import torch

    order = np.argsort(lengths, kind="stable")
    parts: list[Any] = []
    kept = np.zeros((len(ids),), dtype=np.int64)  # embeddings per text (masked tokens dropped)
    with torch.inference_mode():
        for start in range(0, len(order), bsize):
            sel = order[start : start + bsize]
            width = int(lengths[sel].max())
            batch = ids[sel, :width]
            attention = (np.arange(width)[None, :] < lengths[sel, None]).astype(np.int64)
            D, mask = ckpt.doc(torch.from_numpy(batch), torch.from_numpy(attention), keep_dims="return_mask")
            mask = mask.squeeze(-1)
            parts.append(D[mask].to(dtype or torch.float16).cpu())
            kept[sel] = mask.sum(1).cpu().numpy()
    sorted_embs = torch.cat(parts).numpy()
    # back to the input order: text order[j]'s rows sit at sorted offset j
    sorted_offsets = np.concatenate([[0], np.cumsum(kept[order])])
    starts = np.empty((len(ids),), dtype=np.int64)
    starts[order] = sorted_offsets[:-1]
    rows = np.repeat(starts - np.concatenate([[0], np.cumsum(kept)[:-1]]), kept) + np.arange(int(kept.sum()))
    return sorted_embs[rows], kept.astype(np.int32)


def _encode_documents(ckpt: Any, texts: list[str], maxlen: int, bsize: int) -> tuple[Any, Any]:
    """(float16 numpy [n_tokens, dim], int32 [n_texts]) as colbert-ai's ``docFromText`` computes them."""
    import numpy as np
    import torch

    fast = _doc_tokens(ckpt, texts, maxlen)
    if fast is not None:
        return _encode_tokens(ckpt, *fast, bsize)
    # not a fast (Rust) tokenizer: colbert-ai's own path. No to_cpu=True: with
    # keep_dims="flatten" colbert-ai then indexes host embeddings with device
    # indices and fails on a GPU.
    with torch.inference_mode():
        embs, doclens = ckpt.docFromText(texts, bsize=bsize, keep_dims="flatten")
    return embs.to(torch.float16).cpu().numpy(), np.asarray(doclens, dtype=np.int32)


class Engine:
    """A loaded ColBERT checkpoint that can encode, build and open indexes."""

    def __init__(
        self, model: str | os.PathLike[str], *, verbose: bool = False, precision: str | None = None
    ) -> None:
        self.model_name = os.fspath(model)
        self.precision = check_precision(precision)
        self.model_path = resolve_model(model)
        self.verbose = verbose
        self._rag: Any = None
        self._resolved_precision: str | None = None
        self._lock = threading.RLock()

    # --- the model -------------------------------------------------------

    @property
    def rag(self) -> Any:
        """ragatouille's ``RAGPretrainedModel`` for this checkpoint (loaded once)."""
        with self._lock:
            if self._rag is None:
                # ragatouille would default to ./.ragatouille/; this model never
                # builds an index itself, but give it a root away from the cwd anyway.
                scratch = os.path.join(tempfile.gettempdir(), "colbert-modal-scratch")
                self._rag = self._load(index_root=scratch)
            return self._rag

    def _load(self, index_root: str | None) -> Any:
        ragatouille = _import_ragatouille()
        try:
            with _quiet(self.verbose), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ragatouille.RAGPretrainedModel.from_pretrained(
                    self.model_path, index_root=index_root, verbose=1 if self.verbose else 0
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(
                f"could not load ColBERT checkpoint {self.model_name!r} from {self.model_path}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @property
    def checkpoint(self) -> Any:
        """colbert-ai's ``Checkpoint`` (the encoders) inside ragatouille's model."""
        ckpt = self.rag.model.inference_ckpt
        if self._resolved_precision is None:
            with self._lock:
                _speed_up(ckpt)
                self._resolved_precision = _set_precision(ckpt, self.precision)
                logger.debug("%s encodes in %s", self.model_name, self._resolved_precision)
        return ckpt

    @property
    def resolved_precision(self) -> str:
        """What the encoders run in here: "fp32", "bf16" or "native" (colbert-ai's)."""
        self.checkpoint  # noqa: B018 - loads the model and applies the precision
        assert self._resolved_precision is not None
        return self._resolved_precision

    @property
    def dim(self) -> int:
        return int(self.rag.model.config.dim)

    # --- encoding --------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the encoders run: "cuda" or "cpu"."""
        return _checkpoint_device(self.checkpoint)

    @property
    def doc_bsize(self) -> int:
        """Chunks per encoder forward pass: 32 on a CPU, 512 on a GPU.

        Measured on an H100 (BENCHMARKS.md, GPU figures): 512 encodes ~1.5x
        the tokens/s of 32 for 2.2 GiB peak GPU memory with 256-token chunks,
        well inside a 16 GB card. On a CPU larger batches gain nothing.
        """
        return _doc_bsize(self.device)

    @property
    def encode_step(self) -> int:
        """Chunks per call to the model in :meth:`build_exact` (each call runs
        in :attr:`doc_bsize` batches; this bounds how much is held before writing)."""
        return max(256, 4 * self.doc_bsize)

    def encode_documents(
        self, texts: Sequence[str], *, max_tokens: int, bsize: int | None = None
    ) -> tuple[Any, Any]:
        """Token embeddings of ``texts``: (float16 [n_tokens, dim], int32 [n_texts]).

        The same model calls and outputs as colbert-ai's ``docFromText``
        (``[CLS] [D] tokens [SEP]``, punctuation and padding masked, rows
        L2-normalised), orchestrated without its per-token Python: texts are
        tokenized by the Rust tokenizer straight into arrays, sorted by
        length and batched with each batch padded only to its own longest
        text. On a GPU the Python was most of the time (BENCHMARKS.md).
        """
        import numpy as np

        ckpt = self.checkpoint
        bsize = bsize or self.doc_bsize
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float16), np.zeros((0,), dtype=np.int32)
        maxlen = max_tokens + 3  # [CLS] [D] ... [SEP]
        with self._lock, _quiet(self.verbose):
            ckpt.doc_tokenizer.doc_maxlen = maxlen
            ckpt.colbert_config.doc_maxlen = maxlen
            try:
                return _encode_documents(ckpt, list(texts), maxlen, bsize)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise EngineError(f"encoding {len(texts)} passages failed: {exc}") from exc

    def encode_queries(self, queries: Sequence[str]) -> Any:
        """Query embeddings, float32 [n_queries, query_maxlen, dim]."""
        import torch

        ckpt = self.checkpoint
        with self._lock, _quiet(self.verbose):
            qtok = ckpt.query_tokenizer
            base = int(self.rag.model.config.query_maxlen)
            longest = max(len(qtok.tok.tokenize(q)) for q in queries) + 2
            limit = int(self.rag.model.base_model_max_tokens)
            qtok.query_maxlen = min(max(base, ((longest + 15) // 16) * 16), limit)
            try:
                with torch.inference_mode():
                    Q = ckpt.queryFromText(list(queries), bsize=64, to_cpu=True)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise EngineError(f"encoding {len(queries)} queries failed: {exc}") from exc
            finally:
                qtok.query_maxlen = base
        return Q.float()

    # --- indexes ---------------------------------------------------------

    def build_plaid(self, texts: Sequence[str], ids: Sequence[str], dest: Path, *, max_tokens: int) -> None:
        """Build a PLAID index of ``texts`` under ``dest`` with ragatouille."""
        dest.mkdir(parents=True, exist_ok=True)
        rag = self._load(index_root=str(dest))
        device = _checkpoint_device(rag.model.inference_ckpt)
        try:
            with _quiet(self.verbose), warnings.catch_warnings(), _plaid_build_patches(self.precision):
                warnings.simplefilter("ignore")
                path = rag.index(
                    collection=list(texts),
                    document_ids=list(ids),
                    index_name="plaid",
                    overwrite_index="force_silent_overwrite",
                    max_document_length=max_tokens + 3,
                    split_documents=False,
                    **_plaid_build_options(device, len(texts)),
                )
        except (RuntimeError, ValueError, AssertionError, IndexError, KeyError) as exc:
            raise EngineError(f"PLAID index build failed: {type(exc).__name__}: {exc}") from exc
        (dest / "plaid_path").write_text(os.path.relpath(path, dest), encoding="utf-8")

    def build_exact(
        self, texts: Sequence[str], dest: Path, *, max_tokens: int, reuse: tuple[Any, Any, list[int]] | None = None,
        progress: Any = None,
    ) -> None:
        """Encode ``texts`` (except those reused) and store an exact index in ``dest``.

        ``reuse`` is (embeddings, doclens, mapping): ``mapping[i]`` is the row
        of text ``i`` in the previous index, or -1 to encode it.
        """
        import numpy as np

        dest.mkdir(parents=True, exist_ok=True)
        n = len(texts)
        mapping = reuse[2] if reuse else [-1] * n
        todo = [i for i in range(n) if mapping[i] < 0]
        # New embeddings are streamed to a scratch file batch by batch, then
        # copied into embeddings.npy with plain writes: peak memory is one
        # batch, not the whole collection (and never a second concatenated copy).
        scratch = dest / "embeddings.new.tmp"
        enc_lens = np.zeros((len(todo),), dtype=np.int32)
        dim = self.dim
        step = self.encode_step
        with open(scratch, "wb") as f:
            for start in range(0, len(todo), step):
                batch = todo[start : start + step]
                e, d = self.encode_documents([texts[i] for i in batch], max_tokens=max_tokens)
                if e.size:
                    dim = int(e.shape[1])
                f.write(np.ascontiguousarray(e, dtype=np.float16).tobytes())
                enc_lens[start : start + len(batch)] = d
                del e
                if progress is not None:
                    progress(len(batch))
        if reuse:
            old_embs, old_lens = reuse[0], reuse[1]
            old_offsets = np.concatenate([[0], np.cumsum(old_lens, dtype=np.int64)])
            if old_embs.ndim == 2 and old_embs.shape[0]:
                dim = int(old_embs.shape[1])
        lens = np.zeros((n,), dtype=np.int32)
        j = 0
        for i in range(n):
            if mapping[i] >= 0:
                lens[i] = old_lens[mapping[i]]
            else:
                lens[i] = enc_lens[j]
                j += 1
        total = int(lens.sum(dtype=np.int64))
        row_bytes = dim * 2
        try:
            with open(dest / "embeddings.npy", "wb") as out, open(scratch, "rb") as new:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (total, dim)}
                )
                j = 0
                for i in range(n):
                    if mapping[i] >= 0:
                        r = mapping[i]
                        piece = np.asarray(old_embs[old_offsets[r] : old_offsets[r + 1]], dtype=np.float16)
                        out.write(np.ascontiguousarray(piece).tobytes())
                    else:
                        # scratch rows of new text j, in order: a straight copy
                        out.write(new.read(int(enc_lens[j]) * row_bytes))
                        j += 1
        finally:
            scratch.unlink(missing_ok=True)
        np.save(dest / "doclens.npy", lens)
        (dest / "exact.json").write_text(json.dumps({"dim": dim, "chunks": n, "tokens": total}), encoding="utf-8")

    def open(self, engine_dir: Path, backend: str, texts: Sequence[str]) -> ExactIndex | PlaidIndex:
        if backend == "exact":
            return ExactIndex(self, engine_dir)
        if backend == "plaid":
            return PlaidIndex(self, engine_dir, texts)
        raise EngineError(f"unknown index backend {backend!r} on disk")


class ExactIndex:
    """Exact MaxSim over stored token embeddings.

    Chunks are grouped by length (rounded up to :attr:`pad_to` tokens) and
    each group is held as one dense ``[chunks, length, dim]`` tensor, so
    MaxSim is a matrix product and a dense ``amax`` per group; a chunk
    shorter than its group's length is padded with copies of its own first
    token vector, which cannot change its maximum (so no mask is needed).
    Padding costs at most ``pad_to - 1`` rows per chunk (~5% at 256-token
    chunks). Embeddings are float32 in host memory on a CPU, float16 in GPU
    memory when the encoder runs on a GPU. The intermediate is bounded by
    :attr:`block_elements` floats whatever the collection or batch size.
    """

    backend = "exact"
    #: Queries scored together (one pass over the embeddings per block).
    query_block = 64
    #: Floats in one block of token x query-vector similarities (16 MB; 256 MB on a GPU).
    block_elements = 1 << 22
    gpu_block_elements = 1 << 26
    #: Group lengths are multiples of this many tokens.
    pad_to = 16

    def __init__(
        self, engine: Engine, engine_dir: Path, *, device: str | None = None, dtype: Any = None
    ) -> None:
        import numpy as np
        import torch

        self.engine = engine
        try:
            embs = np.load(engine_dir / "embeddings.npy", mmap_mode="r")
            self.doclens = np.load(engine_dir / "doclens.npy").astype(np.int64)
        except (OSError, ValueError) as exc:
            raise EngineError(f"exact index in {engine_dir} is unreadable: {exc}") from exc
        self.embeddings = embs
        self.device = device or engine.device
        if dtype is None:
            # float16 matmuls are native on a GPU. On a CPU float32: float16 is
            # emulated (slow), and bfloat16 (AMX) made one query slower (skinny
            # matmul) while perturbing scores by ~1e-3 (BENCHMARKS.md, section 5).
            dtype = torch.float16 if self.device != "cpu" else torch.float32
        self._dtype = dtype
        dim = embs.shape[1] if embs.ndim == 2 else engine.dim
        offsets = np.concatenate([[0], np.cumsum(self.doclens)])
        lengths = np.maximum(1, -(-self.doclens // self.pad_to) * self.pad_to)  # ceil to pad_to
        #: (chunk positions [nd], embeddings [nd, length, dim]) per group length
        self._groups: list[tuple[Any, Any]] = []
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        for length in np.unique(lengths[self.doclens > 0]):
            docs = np.flatnonzero((lengths == length) & (self.doclens > 0))
            group = torch.empty((len(docs), int(length), dim), dtype=dtype, device=self.device)
            rows_per_step = max(1, (1 << 16) // int(length))  # fill ~64k rows at a time
            for s in range(0, len(docs), rows_per_step):
                part = docs[s : s + rows_per_step]
                pos = np.arange(int(length))[None, :]
                take = np.where(pos < self.doclens[part, None], pos, 0) + offsets[part, None]
                block = np.asarray(embs[take.ravel()], dtype=np_dtype).reshape(len(part), int(length), dim)
                group[s : s + len(part)] = torch.from_numpy(block).to(self.device, dtype)
            self._groups.append((torch.from_numpy(docs).to(self.device), group))

    def __len__(self) -> int:
        return len(self.doclens)

    def _scores(self, Q: Any) -> Any:
        """MaxSim scores [nq, n_docs] (float32, host) of query embeddings Q [nq, qlen, dim]."""
        import torch

        nq, qlen, dim = Q.shape
        m = nq * qlen
        Qt = Q.reshape(m, dim).T.contiguous().to(self.device, self._dtype)  # [dim, m]
        # chunks without tokens (none in practice) score -inf, never 0
        best = torch.full((len(self.doclens), m), float("-inf"), dtype=torch.float32, device=self.device)
        budget = self.block_elements if self.device == "cpu" else self.gpu_block_elements
        for docs, group in self._groups:
            nd, length, _ = group.shape
            step = max(1, budget // (length * m))
            for s in range(0, nd, step):
                sims = group[s : s + step].reshape(-1, dim) @ Qt  # [chunks * length, m]
                best[docs[s : s + step]] = sims.reshape(-1, length, m).amax(1).float()
        # masked query vectors are all zero and add nothing
        return best.reshape(-1, nq, qlen).sum(-1).T.cpu()  # [nq, n]

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        import torch

        n_docs = len(self.doclens)
        if n_docs == 0:
            return [[] for _ in queries]
        Q = self.engine.encode_queries(queries)  # [nq, qlen, dim]
        k = min(k, n_docs)
        out: list[Hits] = []
        with torch.inference_mode():
            for b in range(0, Q.shape[0], self.query_block):
                scores = self._scores(Q[b : b + self.query_block])
                top = torch.topk(scores, k, dim=1)
                for vals, idx in zip(top.values, top.indices):
                    out.append([(int(i), float(v)) for v, i in zip(vals, idx)])
        return out


class PlaidIndex:
    """A PLAID index built by ragatouille, opened with ``from_index``."""

    backend = "plaid"

    def __init__(self, engine: Engine, engine_dir: Path, texts: Sequence[str]) -> None:
        ragatouille = _import_ragatouille()
        rel = (engine_dir / "plaid_path").read_text(encoding="utf-8").strip()
        path = engine_dir / rel
        self.engine = engine
        self.n = len(texts)
        _point_index_at_checkpoint(path, engine.model_path)
        try:
            with _quiet(engine.verbose), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.rag = ragatouille.RAGPretrainedModel.from_index(str(path), verbose=0)
        except (OSError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
            raise EngineError(f"PLAID index {path} could not be opened: {type(exc).__name__}: {exc}") from exc
        self._pid_of = {doc_id: pid for pid, doc_id in self.rag.model.pid_docid_map.items()}
        self._ids = [self.rag.model.pid_docid_map[p] for p in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        if self.n == 0:
            return [[] for _ in queries]
        k = min(k, self.n)
        try:
            with _quiet(self.engine.verbose), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = self.rag.search(list(queries), k=k)
        except (RuntimeError, ValueError, AssertionError, IndexError, KeyError) as exc:
            raise EngineError(f"PLAID search failed: {type(exc).__name__}: {exc}") from exc
        if len(queries) == 1 and res and isinstance(res[0], dict):
            res = [res]  # ragatouille flattens single-query results
        return [[(int(r["passage_id"]), float(r["score"])) for r in hits] for hits in res]


#: k-means trains on a random subsample of at most this many token vectors
#: per centroid. colbert-ai's sample gives ~150-300 per centroid and its own
#: comment there says it means to subsample "to 100 * num_partitions" (faiss
#: caps at 256 and warns below 39). The cap halves k-means time from ~30k
#: chunks (BENCHMARKS.md, "PLAID builds on a GPU").
KMEANS_MAX_POINTS_PER_CENTROID = 128
#: Size of one block of point-to-centroid scores, the only large temporary.
_KMEANS_BLOCK_BYTES = 256 << 20
#: Training samples whose working copy is up to this size are copied to the
#: device once; larger ones are converted block by block, so memory stays bounded.
_KMEANS_RESIDENT_BYTES = 4 << 30


def kmeans(
    sample: Any,
    k: int,
    niters: int,
    *,
    device: str = "cpu",
    seed: int = 123,
    max_points_per_centroid: int = KMEANS_MAX_POINTS_PER_CENTROID,
) -> Any:
    """Lloyd's k-means of ``sample`` (n x dim tensor, on the CPU) into ``k`` centroids.

    This replaces the two k-means colbert-ai's PLAID build can get through
    ragatouille: ``fast_pytorch_kmeans`` (below 75k passages) builds a
    centroids x points mask each iteration (10 GB at 979 chunks on a CPU;
    with more than 15k centroids it only sees one random minibatch of 16k
    points per iteration), and colbert-ai's faiss k-means (75k passages and
    up) asks for a GPU index that the faiss-cpu wheel lacks, so a GPU build
    clusters on the CPU. Here:

    - memory is bounded: scores are computed in blocks of ~256 MB; the
      sample is copied to ``device`` (and the matmul dtype) once when that
      copy is under 4 GB, and converted block by block otherwise;
    - it trains on at most ``max_points_per_centroid`` random points per
      centroid (see :data:`KMEANS_MAX_POINTS_PER_CENTROID`), starts from
      distinct random points (as faiss does) and gives empty clusters a
      perturbed copy of a populous one;
    - scores use float16 matrix products on a GPU, float32 on a CPU.

    Returns float32 centroids on the CPU (colbert-ai normalises them).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    n, dim = sample.shape
    if n == 0 or k <= 0:
        raise ValueError(f"k-means needs points and centroids, got {n} points and k={k}")
    if n > k * max_points_per_centroid:
        sample = sample[torch.randperm(n, generator=gen)[: k * max_points_per_centroid]]
        n = sample.shape[0]
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    itemsize = torch.empty((), dtype=dtype).element_size()
    resident = sample.to(dev, dtype) if n * dim * itemsize <= _KMEANS_RESIDENT_BYTES else None
    if n >= k:
        first = torch.randperm(n, generator=gen)[:k]
    else:  # fewer points than centroids: every point, then repeats
        first = torch.cat([torch.randperm(n, generator=gen), torch.randint(n, (k - n,), generator=gen)])
    centroids = sample[first].to(dev, torch.float32)
    block = max(256, _KMEANS_BLOCK_BYTES // (k * itemsize))
    with torch.inference_mode():
        for _ in range(niters):
            sums = torch.zeros(k, dim, device=dev, dtype=torch.float32)
            counts = torch.zeros(k, device=dev, dtype=torch.int64)
            c = centroids.to(dtype)
            # argmin ||x - c||^2 == argmax (x . c - ||c||^2 / 2)
            bias = (-0.5 * (centroids * centroids).sum(1)).to(dtype)
            for start in range(0, n, block):
                if resident is not None:
                    x = resident[start : start + block]
                else:
                    x = sample[start : start + block].to(dev, dtype, non_blocking=True)
                assign = torch.addmm(bias, x, c.T).argmax(1)
                sums.index_add_(0, assign, x.float())
                counts += torch.bincount(assign, minlength=k)
            empty = counts == 0
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
            n_empty = int(empty.sum())
            if n_empty:
                donors = torch.multinomial(counts.double().cpu(), n_empty, replacement=True, generator=gen)
                jitter = 1e-3 * torch.randn(n_empty, dim, generator=gen)
                centroids[empty] = centroids[donors.to(dev)] + jitter.to(dev)
    return centroids.float().cpu()


@contextlib.contextmanager
def _plaid_build_patches(precision: str | None = None) -> Iterator[None]:
    """What our PLAID builds change in colbert-ai/ragatouille, for one ``rag.index`` call.

    - Each passage is encoded once (see below), in ``precision``.
    - k-means is :func:`kmeans`, whichever route ragatouille takes, except
      where ragatouille is asked for faiss on a CPU (``use_faiss=True``, see
      :data:`FAISS_KMEANS_MIN_CHUNKS`): there faiss is 1.9x faster.
    - ragatouille's 5 s pause after warning that faiss-cpu cannot use the GPU
      is skipped (the warning is moot: faiss is not asked to cluster).

    The patches are process-wide, so PLAID builds in one process run one at
    a time (colbert-ai's ``Run()`` context is process-wide too).

    colbert-ai encodes a k-means sample of the collection (for fewer than
    ~30k passages the sample is the whole collection) and then encodes every
    passage again to compress it. Here passages are encoded as
    :meth:`Engine.encode_documents` does (same embeddings as colbert-ai's
    ``docFromText``, 2x its speed on a GPU), and the second pass takes
    the sample's embeddings from memory (host memory; each is dropped once
    used) and encodes only passages that were not in the sample. The
    embeddings are the same tensors the first pass produced. The
    build's own checkpoint encodes in ``precision`` (see
    :func:`resolve_precision`), and hands colbert-ai the dtype it expects
    (float32 on a CPU).
    """
    import types

    import colbert.indexing.collection_indexer as collection_indexer
    import ragatouille.models.index as rag_index
    import ragatouille.models.torch_kmeans as rag_kmeans
    from colbert.indexing.collection_encoder import CollectionEncoder

    with _PLAID_BUILD_LOCK:
        original = CollectionEncoder.encode_passages
        originals = (rag_kmeans.compute_pytorch_kmeans, collection_indexer.compute_faiss_kmeans, rag_index.time)
        cache: dict[str, Any] = {}
        calls = [0]

        def encode_passages(self: Any, passages: Sequence[str]) -> tuple[Any, Any]:
            import torch

            if len(passages) == 0:
                return original(self, passages)
            calls[0] += 1
            keep = calls[0] == 1  # colbert-ai encodes the whole k-means sample in its first call
            unique = list(dict.fromkeys(passages))
            missing = [p for p in unique if p not in cache]
            got: dict[str, Any] = {}
            if missing:
                _speed_up(self.checkpoint)
                if not isinstance(getattr(self.checkpoint, "amp_manager", None), _Autocast):
                    _set_precision(self.checkpoint, precision, backend="plaid")
                maxlen = self.config.doc_maxlen
                pooled = getattr(self.config, "pool_factor", 1) not in (None, 1)  # colbert-ai's token pooling
                if pooled or _doc_tokens(self.checkpoint, missing[:1], maxlen) is None:  # or a slow tokenizer
                    embs, doclens = original(self, missing)
                else:
                    e, d = _encode_tokens(self.checkpoint, *_doc_tokens(self.checkpoint, missing, maxlen),
                                          self.config.index_bsize, torch.float16 if self.use_gpu else torch.float32)
                    embs, doclens = torch.from_numpy(e), d.tolist()
                # on the host (colbert-ai moves each compression batch to the GPU itself),
                # in the dtype colbert-ai checks for: float16 with a GPU, float32 without
                embs = embs.cpu().to(torch.float16 if self.use_gpu else torch.float32)
                offset = 0
                for text, n in zip(missing, doclens):
                    got[text] = embs[offset : offset + n]
                    if keep:
                        cache[text] = got[text]
                    offset += n
            if len(got) == len(passages):  # all new and distinct: embs is already the answer
                return embs, [int(n) for n in doclens]
            for text in unique:
                if text not in got:
                    got[text] = cache.pop(text)
            parts = [got[p] for p in passages]
            return torch.cat(parts), [int(t.shape[0]) for t in parts]

        def pytorch_kmeans(sample: Any, dim: int, num_partitions: int, kmeans_niters: int, use_gpu: bool, **_: Any) -> Any:
            return kmeans(sample, num_partitions, kmeans_niters, device="cuda" if use_gpu else "cpu")

        def faiss_kmeans(dim: int, num_partitions: int, kmeans_niters: int, shared_lists: Any, return_value_queue: Any = None) -> Any:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            centroids = kmeans(shared_lists[0][0], num_partitions, kmeans_niters, device=device)
            if return_value_queue is not None:
                return_value_queue.put(centroids)
            return centroids

        CollectionEncoder.encode_passages = encode_passages
        rag_kmeans.compute_pytorch_kmeans = pytorch_kmeans
        if _cuda_available():
            collection_indexer.compute_faiss_kmeans = faiss_kmeans
            rag_index.time = types.SimpleNamespace(sleep=lambda _s: None)
        try:
            yield
        finally:
            CollectionEncoder.encode_passages = original
            rag_kmeans.compute_pytorch_kmeans, collection_indexer.compute_faiss_kmeans, rag_index.time = originals
            cache.clear()


_PLAID_BUILD_LOCK = threading.Lock()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _point_index_at_checkpoint(index_path: Path, model_path: str) -> None:
    """Rewrite the checkpoint path colbert-ai recorded in the index, if it moved.

    colbert-ai stores the checkpoint's absolute path and reopens from there;
    an index built in a Modal container (or before a checkpoint moved) would
    otherwise point nowhere.
    """
    meta = index_path / "metadata.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    cfg = data.get("config", data)
    if cfg.get("checkpoint") != model_path:
        cfg["checkpoint"] = model_path
        tmp = meta.with_name(f".metadata.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=4), encoding="utf-8")
        os.replace(tmp, meta)


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
