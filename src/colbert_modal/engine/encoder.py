"""The loaded ColBERT checkpoint (:class:`Encoder`) and the fast document encoding it runs.

:class:`Encoder` loads a checkpoint through ragatouille once and encodes
documents and queries with colbert-ai's ``Checkpoint``, in the precision
:mod:`~colbert_modal.engine.precision` resolves. Documents skip
colbert-ai's per-token Python: :func:`doc_tokens` tokenizes straight into
arrays, :func:`encode_tokens` runs the model in length-sorted batches, and
:func:`speed_up` gives a checkpoint a vectorised punctuation mask. The
PLAID build (:mod:`~colbert_modal.engine.plaid`) encodes with the same
functions. This module builds no index.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import EngineError, ModelLoadError
from ..hub import resolve_model
from ._upstream import import_ragatouille, load_lock, quiet
from .precision import check_precision, checkpoint_device, resolve_precision, set_precision
from .query_encoder import QueryEncoder, UnsupportedCheckpoint, default_device, read_settings

__all__ = [
    "Encoder",
    "doc_bsize",
    "doc_tokens",
    "encode_documents",
    "encode_tokens",
    "shared_query_encodings",
    "speed_up",
    "vectorised_mask",
]

_SHARED = threading.local()


@contextlib.contextmanager
def shared_query_encodings() -> Iterator[None]:
    """Within the block, this thread encodes a list of queries once per encoder.

    A sharded index searches every shard with the same queries and the same
    model: each shard's search takes the first one's query embeddings.
    """
    outer = getattr(_SHARED, "memo", None)
    _SHARED.memo = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED.memo = outer

logger = logging.getLogger(__name__)


def doc_bsize(device: str) -> int:
    """Chunks per encoder forward pass on ``device``: 512 on a GPU, 32 on a CPU."""
    return 512 if device == "cuda" else 32


def vectorised_mask(self: Any, input_ids: Any, skiplist: Any) -> Any:
    """colbert-ai's ``ColBERT.mask`` (token kept unless punctuation or padding)
    in numpy instead of a Python loop over every token."""
    import numpy as np

    ids = input_ids.cpu().numpy()
    skip = np.array([k for k in skiplist if isinstance(k, int)] or [-1], dtype=ids.dtype)
    return ~np.isin(ids, skip) & (ids != self.pad_token)


def speed_up(ckpt: Any) -> None:
    """Give one of our colbert-ai ``Checkpoint`` instances the vectorised mask."""
    import types

    if getattr(ckpt.mask, "__func__", None) is not vectorised_mask:
        ckpt.mask = types.MethodType(vectorised_mask, ckpt)


def doc_tokens(ckpt: Any, texts: list[str], maxlen: int, *, cut: bool = False) -> tuple[Any, Any] | None:
    """colbert-ai's ``DocTokenizer.tensorize`` ids as numpy: (ids [n, L], lengths [n]).

    ``[CLS] text [SEP]`` truncated to ``maxlen - 1`` tokens, then the
    ``[D]`` marker inserted after ``[CLS]``; rows padded with the pad id.
    None where the checkpoint's tokenizer is not a fast (Rust) one. Our own
    copy of the Rust tokenizer (its truncation settings are ours) is kept on
    the checkpoint. A text longer than that is an error unless ``cut``
    (reranking cuts, as ColBERT's document encoder does; an index never does).
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
    for i, enc in enumerate(encodings):
        if enc.overflowing and not cut:  # never cut a passage silently: the planner makes chunks that fit
            raise ValueError(
                f"passage {i} has more than {maxlen - 3} tokens, the encoder's window; it would be cut "
                "(chunk it with the index's max_tokens)"
            )
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.full((len(texts), int(lengths.max())), doc_tok.tok.pad_token_id, dtype=np.int64)
    for row, enc in zip(ids, encodings, strict=True):
        e = enc.ids
        row[0] = e[0]
        row[1] = doc_tok.D_marker_token_id
        row[2 : len(e) + 1] = e[1:]
    return ids, lengths


def encode_tokens(ckpt: Any, ids: Any, lengths: Any, bsize: int, dtype: Any = None) -> tuple[Any, Any]:
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


def encode_documents(ckpt: Any, texts: list[str], maxlen: int, bsize: int, *, cut: bool = False) -> tuple[Any, Any]:
    """(float16 numpy [n_tokens, dim], int32 [n_texts]) as colbert-ai's ``docFromText`` computes them."""
    import numpy as np
    import torch

    fast = doc_tokens(ckpt, texts, maxlen, cut=cut)
    if fast is not None:
        return encode_tokens(ckpt, *fast, bsize)
    # not a fast (Rust) tokenizer: colbert-ai's own path. No to_cpu=True: with
    # keep_dims="flatten" colbert-ai then indexes host embeddings with device
    # indices and fails on a GPU.
    with torch.inference_mode():
        embs, doclens = ckpt.docFromText(texts, bsize=bsize, keep_dims="flatten")
    return embs.to(torch.float16).cpu().numpy(), np.asarray(doclens, dtype=np.int32)


class Encoder:
    """A loaded ColBERT checkpoint that encodes documents and queries."""

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
        #: the lean query encoder; False where the checkpoint needs colbert-ai's (see :attr:`query_encoder`)
        self._query_encoder: QueryEncoder | bool | None = None

    # --- the model -------------------------------------------------------

    @property
    def rag(self) -> Any:
        """ragatouille's ``RAGPretrainedModel`` for this checkpoint (loaded once)."""
        with self._lock:
            if self._rag is None:
                # ragatouille would default to ./.ragatouille/; this model never
                # builds an index itself, but give it a root away from the cwd anyway.
                scratch = os.path.join(tempfile.gettempdir(), "colbert-modal-scratch")
                self._rag = self.load(index_root=scratch)
            return self._rag

    def load(self, index_root: str | None) -> Any:
        """A new ragatouille ``RAGPretrainedModel`` of this checkpoint whose indexes go under ``index_root``."""
        ragatouille = import_ragatouille()
        try:
            with load_lock(), quiet(self.verbose):  # one checkpoint load at a time, process-wide
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
                speed_up(ckpt)
                self._resolved_precision = set_precision(ckpt, self.precision)
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
        if self._rag is None:  # without loading ragatouille
            with contextlib.suppress(UnsupportedCheckpoint):  # unreadable: let colbert-ai say why
                return read_settings(self.model_path).dim
        return int(self.rag.model.config.dim)

    # --- encoding --------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the encoders run: "cuda" or "cpu"."""
        if self._rag is None:  # where colbert-ai will put it, without loading ragatouille
            return default_device()
        return checkpoint_device(self.checkpoint)

    @property
    def doc_bsize(self) -> int:
        """Chunks per encoder forward pass: 32 on a CPU, 512 on a GPU.

        Measured on an H100 (BENCHMARKS.md, GPU figures): 512 encodes ~1.5x
        the tokens/s of 32 for 2.2 GiB peak GPU memory with 256-token chunks,
        well inside a 16 GB card. On a CPU larger batches gain nothing.
        """
        return doc_bsize(self.device)

    @property
    def encode_step(self) -> int:
        """Chunks per call to the model in an exact build (each call runs in
        :attr:`doc_bsize` batches; this bounds how much is held before writing)."""
        return max(256, 4 * self.doc_bsize)

    def encode_documents(
        self, texts: Sequence[str], *, max_tokens: int, bsize: int | None = None, cut: bool = False
    ) -> tuple[Any, Any]:
        """Token embeddings of ``texts``: (float16 [n_tokens, dim], int32 [n_texts]).

        A text over ``max_tokens`` tokens is an EngineError (an index never
        cuts a chunk), or cut there with ``cut=True`` (reranking).

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
        with self._lock, quiet(self.verbose):
            ckpt.doc_tokenizer.doc_maxlen = maxlen
            ckpt.colbert_config.doc_maxlen = maxlen
            try:
                return encode_documents(ckpt, list(texts), maxlen, bsize, cut=cut)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise EngineError(f"encoding {len(texts)} passages failed: {exc}") from exc

    def encode_queries(self, queries: Sequence[str]) -> Any:
        """Query embeddings, float32 [n_queries, query_maxlen, dim] (see :func:`shared_query_encodings`)."""
        memo = getattr(_SHARED, "memo", None)
        key = (id(self), tuple(queries))
        if memo is not None and key in memo:
            return memo[key]
        Q = self._encode_queries(queries)
        if memo is not None:
            memo[key] = Q
        return Q

    @property
    def query_encoder(self) -> QueryEncoder | None:
        """The lean query encoder (:mod:`~colbert_modal.engine.query_encoder`), loaded once;
        None where the checkpoint needs colbert-ai's (queries then go through ragatouille)."""
        with self._lock:
            if self._query_encoder is None:
                device = self.device
                weights = None
                if self._rag is not None:  # share the loaded checkpoint's weights
                    ckpt = self.checkpoint
                    weights = {f"bert.{k}": v for k, v in ckpt.bert.state_dict().items()}
                    weights["linear.weight"] = ckpt.linear.weight
                precision = resolve_precision(self.precision, device, queries=True)  # int8 on a GPU: refused
                try:
                    self._query_encoder = QueryEncoder(
                        self.model_path, precision=precision, device=device,
                        weights=weights,
                    )
                except UnsupportedCheckpoint as exc:
                    logger.info("queries of %s are encoded by colbert-ai: %s", self.model_name, exc)
                    self._query_encoder = False
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    raise ModelLoadError(
                        f"could not load ColBERT checkpoint {self.model_name!r} from {self.model_path}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            return self._query_encoder if isinstance(self._query_encoder, QueryEncoder) else None

    def _encode_queries(self, queries: Sequence[str]) -> Any:
        lean = self.query_encoder
        if lean is None:
            return self.encode_queries_upstream(queries)
        try:
            return lean.encode(queries)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise EngineError(f"encoding {len(queries)} queries failed: {exc}") from exc

    def encode_queries_upstream(self, queries: Sequence[str]) -> Any:
        """Query embeddings by colbert-ai's ``Checkpoint.queryFromText`` (loads ragatouille), as
        :meth:`encode_queries` computes them without it: float32 [n_queries, query length, dim]."""
        import torch

        ckpt = self.checkpoint
        with self._lock, quiet(self.verbose):
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
