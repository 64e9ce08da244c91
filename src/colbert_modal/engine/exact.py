"""The exact index format: build it, load it, reuse a previous generation's embeddings, search it (ExactIndex).

Every chunk is encoded once with the checkpoint's document encoder and its
token embeddings are stored; search is exact MaxSim over all of them, and an
update encodes only new chunks (:func:`reuse_from`). On disk, in a
generation's engine directory:

``embeddings.npy``
    float16 ``[tokens, dim]``: every chunk's token embeddings, chunk after
    chunk in index order.
``doclens.npy``
    int32 ``[chunks]``: how many rows of ``embeddings.npy`` each chunk has.
``exact.json``
    ``{"dim", "chunks", "tokens"}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import EngineError, IndexStorageError
from ..progress import Stage
from .encoder import Encoder

__all__ = ["ExactIndex", "Reuse", "build", "load", "read_npy", "reuse_from"]


class Reuse(NamedTuple):
    """A previous exact index's embeddings, and where each new chunk's rows are in it."""

    #: float16 [tokens, dim] (memory-mapped when read by :func:`reuse_from`)
    embeddings: Any
    #: tokens per chunk of the previous index
    doclens: Any
    #: ``mapping[i]``: the previous index's chunk holding text ``i``, or -1 to encode it
    mapping: list[int]


def load(engine_dir: Path) -> tuple[Any, Any]:
    """(embeddings, memory-mapped float16 [tokens, dim]; doclens [chunks]) of the exact index in ``engine_dir``.

    Raises :class:`~colbert_modal.errors.EngineError` where they are unreadable.
    """
    try:
        embs = read_npy(engine_dir / "embeddings.npy", mmap=True)
        doclens = read_npy(engine_dir / "doclens.npy")
    except (OSError, ValueError) as exc:
        raise EngineError(f"exact index in {engine_dir} is unreadable: {exc}") from exc
    return embs, doclens


#: The header numpy writes for a plain array: ``{'descr': '<f2', 'fortran_order': False, 'shape': (3, 128), }``.
_NPY_HEADER = re.compile(
    r"\{\s*'descr':\s*'([<>|=]?[a-zA-Z]\d*)',\s*'fortran_order':\s*(True|False),\s*"
    r"'shape':\s*\(\s*((?:\d+\s*,\s*)*(?:\d+\s*)?)\),?\s*\}\s*"
)


def read_npy(path: Path, *, mmap: bool = False) -> Any:
    """The array in the ``.npy`` file at ``path`` (memory-mapped where ``mmap``), read without ``ast``.

    ``np.load`` parses the header with ``ast.literal_eval``; on CPython 3.11
    that can raise ``SystemError: AST constructor recursion depth mismatch``
    when several threads parse at once and a garbage collection runs
    finalizers in the middle (the interpreter's AST state is shared:
    python/cpython#106905). Our files' headers are one plain dict (numeric
    dtype, C order), read here with a regular expression; anything else
    goes to ``np.load``. Raises ValueError for a header or size that does
    not fit, OSError where the file cannot be read.
    """
    import numpy as np

    with open(path, "rb") as f:
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
            raise ValueError(f"{path.name} is not a .npy file")
        major = magic[6]
        size_bytes = 2 if major == 1 else 4
        raw = f.read(size_bytes)
        if len(raw) < size_bytes:
            raise ValueError(f"{path.name}: truncated .npy header")
        header_len = int.from_bytes(raw, "little")
        header = f.read(header_len).decode("utf-8" if major >= 3 else "latin-1")
        offset = 8 + size_bytes + header_len
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
    m = _NPY_HEADER.fullmatch(header)
    if m is None or m.group(2) == "True" or major not in (1, 2, 3):
        return np.load(path, mmap_mode="r" if mmap else None)  # not one of ours: numpy's own parser
    dtype = np.dtype(m.group(1))
    if dtype.hasobject:
        raise ValueError(f"{path.name}: object arrays are not read")
    shape = tuple(int(x) for x in m.group(3).replace(",", " ").split())
    count = int(np.prod(shape, dtype=np.int64))
    if file_size - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path.name}: {file_size - offset} bytes of data where its header {shape} needs {count * dtype.itemsize}"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape)


def reuse_from(engine_dir: Path, mapping: list[int]) -> Reuse:
    """What :func:`build` needs to copy the embeddings of the exact index in ``engine_dir``.

    ``mapping[i]`` is the chunk (row of ``doclens.npy``) of ``engine_dir``
    whose embeddings text ``i`` of the new build takes, or -1 where text
    ``i`` is encoded. The embeddings stay on disk (memory-mapped).
    """
    embs, doclens = load(engine_dir)
    return Reuse(embs, doclens, list(mapping))


def build(
    engine: Encoder, texts: Sequence[str], dest: Path, *, max_tokens: int, reuse: Reuse | None = None,
    stage: Stage | None = None,
) -> None:
    """Encode ``texts`` (except those reused) with ``engine`` and store an exact index in ``dest``.

    ``reuse`` (see :func:`reuse_from`) is (embeddings, doclens, mapping):
    ``mapping[i]`` is the row of text ``i`` in the previous index, or -1 to
    encode it. ``stage`` (a progress stage) counts the texts as they are encoded.
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
    dim = engine.dim
    step = engine.encode_step
    with open(scratch, "wb") as f:
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            e, d = engine.encode_documents([texts[i] for i in batch], max_tokens=max_tokens)
            if e.size:
                dim = int(e.shape[1])
            f.write(np.ascontiguousarray(e, dtype=np.float16).tobytes())
            enc_lens[start : start + len(batch)] = d
            del e
            if stage is not None:
                stage.update(len(batch))
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
        self, engine: Encoder, engine_dir: Path, *, device: str | None = None, dtype: Any = None
    ) -> None:
        import numpy as np
        import torch

        self.engine = engine
        self.engine_dir = engine_dir
        embs, doclens = load(engine_dir)
        self.doclens = doclens.astype(np.int64)
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
        # where each chunk is held: its group, and its row there (-1: no tokens, in no group)
        self._group_of = np.full(len(self.doclens), -1, dtype=np.int32)
        self._row_of = np.zeros(len(self.doclens), dtype=np.int64)
        for g, (docs, _) in enumerate(self._groups):
            d = docs.cpu().numpy()
            self._group_of[d] = g
            self._row_of[d] = np.arange(len(d))

    def __len__(self) -> int:
        return len(self.doclens)

    def _scores(self, Q: Any, subset: Any = None) -> Any:
        """MaxSim scores [nq, n] (float32, host) of query embeddings Q [nq, qlen, dim].

        ``n`` is every chunk, or the chunks at positions ``subset`` (int array)
        in that order: only those are read and scored.
        """
        import numpy as np
        import torch

        nq, qlen, dim = Q.shape
        m = nq * qlen
        Qt = Q.reshape(m, dim).T.contiguous().to(self.device, self._dtype)  # [dim, m]
        n = len(self.doclens) if subset is None else len(subset)
        # chunks without tokens (none in practice) score -inf, never 0
        best = torch.full((n, m), float("-inf"), dtype=torch.float32, device=self.device)
        budget = self.block_elements if self.device == "cpu" else self.gpu_block_elements
        # (output rows, group tensor, rows of the group or None for all of it)
        plan: list[tuple[Any, Any, Any]] = []
        if subset is None:
            plan = [(docs, group, None) for docs, group in self._groups]
        else:
            gs = self._group_of[subset]
            for g in np.unique(gs[gs >= 0]):
                out_rows = np.flatnonzero(gs == g)
                rows = torch.from_numpy(self._row_of[subset[out_rows]]).to(self.device)
                plan.append((torch.from_numpy(out_rows).to(self.device), self._groups[g][1], rows))
        for out_rows, group, rows in plan:
            nd = len(out_rows)
            length = group.shape[1]
            step = max(1, budget // (length * m))
            for s in range(0, nd, step):
                block = group[s : s + step] if rows is None else group.index_select(0, rows[s : s + step])
                sims = block.reshape(-1, dim) @ Qt  # [chunks * length, m]
                best[out_rows[s : s + step]] = sims.reshape(-1, length, m).amax(1).float()
        # masked query vectors are all zero and add nothing
        return best.reshape(-1, nq, qlen).sum(-1).T.cpu()  # [nq, n]

    def search(self, queries: Sequence[str], k: int, subset: Any = None) -> list[list[tuple[int, float]]]:
        """The ``k`` best (chunk position, score) of each query, best first (the engine's ``Hits``).

        Every chunk tied with the ``k``-th score is returned too (so there
        may be more than ``k``): which of them make the list is decided by
        the tie rule (:func:`~colbert_modal.search.result_key`), not here.
        ``subset`` (an int array of chunk positions, or None for all): rank
        only those chunks; only they are scored, so the cost follows their
        number. The result is exact MaxSim over them.
        """
        import numpy as np
        import torch

        n_docs = len(self.doclens)
        if subset is not None:
            subset = np.asarray(subset, dtype=np.int64)
            n_docs = len(subset)
        if n_docs == 0:
            return [[] for _ in queries]
        Q = self.engine.encode_queries(queries)  # [nq, qlen, dim]
        k = min(k, n_docs)
        out: list[list[tuple[int, float]]] = []
        with torch.inference_mode():
            for b in range(0, Q.shape[0], self.query_block):
                scores = self._scores(Q[b : b + self.query_block], subset)
                if bool(torch.isnan(scores).any()):
                    raise IndexStorageError(
                        f"index file {self.engine_dir / 'embeddings.npy'} is damaged: it gives NaN scores; "
                        "rebuild with index(..., rebuild=True) or `colbert-modal index --rebuild`"
                    )
                out.extend(_top_with_ties(scores, k, subset))
        return out


def _top_with_ties(scores: Any, k: int, subset: Any) -> list[list[tuple[int, float]]]:
    """Per row of ``scores`` [nq, n]: the ``k`` best (position, score), and every chunk tied with the ``k``-th."""
    import torch

    out: list[list[tuple[int, float]]] = []
    top = torch.topk(scores, k, dim=1)
    for row, vals, idx in zip(scores, top.values, top.indices, strict=True):
        kth = vals[-1]
        if int((row >= kth).sum()) > k:  # a tie at the cut: take all of it, in position order
            idx = torch.nonzero(row >= kth).flatten()
            vals = row[idx]
        pos = idx.numpy() if subset is None else subset[idx.numpy()]
        out.append(sorted(((int(i), float(v)) for v, i in zip(vals, pos, strict=True)), key=lambda h: (-h[1], h[0])))
    return out
