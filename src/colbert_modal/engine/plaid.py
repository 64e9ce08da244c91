"""PLAID indexes through ragatouille: build options, the build patches and their lock, the build, PlaidIndex.

ragatouille's ``RAGPretrainedModel.index`` (colbert-ai PLAID: k-means
centroids and compressed residuals) builds the index; :func:`build` runs it
inside :func:`plaid_build_patches`, so that each passage is encoded once, by
our encoder (:mod:`~colbert_modal.engine.encoder`), and clusters with
:func:`~colbert_modal.engine.clustering.kmeans` (or faiss on a CPU, see
:func:`plaid_build_options`). :class:`PlaidIndex` opens a built index with
ragatouille's ``from_index`` and searches it with colbert-ai's own search.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..progress import Progress
from . import clustering, encoder
from ._upstream import import_ragatouille, index_checkpoint, load_lock, plaid_build_targets, quiet
from .precision import Autocast, checkpoint_device, set_precision

__all__ = ["FAISS_KMEANS_MIN_CHUNKS", "PlaidIndex", "build", "plaid_build_options", "plaid_build_patches"]

#: PLAID builds on a CPU of at least this many chunks cluster with faiss's
#: CPU k-means (1.9x the speed of :func:`~colbert_modal.engine.clustering.kmeans`
#: on a CPU, same quality); smaller ones, and every build on a GPU, with
#: ``kmeans``. ragatouille's own default (fast_pytorch_kmeans) is never used: it
#: holds a centroids x points mask, measured 10 GB RSS at 979 chunks and the OOM
#: killer at 2,000 chunks on a 24 GB machine (BENCHMARKS.md).
FAISS_KMEANS_MIN_CHUNKS = 200


def plaid_build_options(device: str, n_passages: int) -> dict[str, Any]:
    """The options our PLAID builds pass to ragatouille's build (``rag.index``)."""
    return {"use_faiss": device == "cpu" and n_passages >= FAISS_KMEANS_MIN_CHUNKS, "bsize": encoder.doc_bsize(device)}


@contextlib.contextmanager
def plaid_build_patches(precision: str | None = None, progress: Progress | None = None) -> Iterator[None]:
    """What our PLAID builds change in colbert-ai/ragatouille, for one ``rag.index`` call.

    ``progress`` shows the build's stages: encoding (the k-means sample, in
    passages), PLAID training (k-means; a spinner) and PLAID compression
    (every passage, in passages).

    - Each passage is encoded once (see below), in ``precision``.
    - k-means is :func:`~colbert_modal.engine.clustering.kmeans`, whichever
      route ragatouille takes, except where ragatouille is asked for faiss on
      a CPU (``use_faiss=True``, see :data:`FAISS_KMEANS_MIN_CHUNKS`): there
      faiss is 1.9x faster.
    - ragatouille's 5 s pause after warning that faiss-cpu cannot use the GPU
      is skipped (the warning is moot: faiss is not asked to cluster).

    The patches are process-wide, so PLAID builds in one process run one at
    a time (colbert-ai's ``Run()`` context is process-wide too).

    colbert-ai encodes a k-means sample of the collection (for fewer than
    ~30k passages the sample is the whole collection) and then encodes every
    passage again to compress it. Here passages are encoded as
    :meth:`Encoder.encode_documents <colbert_modal.engine.encoder.Encoder.encode_documents>`
    does (same embeddings as colbert-ai's ``docFromText``, 2x its speed on a
    GPU), and the second pass takes the sample's embeddings from memory (host
    memory; each is dropped once used) and encodes only passages that were not
    in the sample. The embeddings are the same tensors the first pass produced.
    The build's own checkpoint encodes in ``precision`` (see
    :func:`~colbert_modal.engine.precision.resolve_precision`), and hands
    colbert-ai the dtype it expects (float32 on a CPU).
    """
    import types

    targets = plaid_build_targets()
    CollectionEncoder = targets.collection_encoder
    collection_indexer, rag_kmeans, rag_index = targets.collection_indexer, targets.rag_kmeans, targets.rag_index

    with _PLAID_BUILD_LOCK:
        original = CollectionEncoder.encode_passages
        originals = (rag_kmeans.compute_pytorch_kmeans, collection_indexer.compute_faiss_kmeans, rag_index.time)
        cache: dict[str, Any] = {}
        calls = [0]
        stages = _BuildStages(progress)

        def encode_passages(self: Any, passages: Sequence[str]) -> tuple[Any, Any]:
            if len(passages) == 0:
                return original(self, passages)
            calls[0] += 1
            keep = calls[0] == 1  # colbert-ai encodes the whole k-means sample in its first call
            stages.before_encoding(keep, len(passages))
            out = encode(self, passages, keep)
            stages.after_encoding(keep, len(passages))
            return out

        def encode(self: Any, passages: Sequence[str], keep: bool) -> tuple[Any, Any]:
            import torch

            unique = list(dict.fromkeys(passages))
            missing = [p for p in unique if p not in cache]
            got: dict[str, Any] = {}
            if missing:
                encoder.speed_up(self.checkpoint)
                if not isinstance(getattr(self.checkpoint, "amp_manager", None), Autocast):
                    set_precision(self.checkpoint, precision, backend="plaid")
                maxlen = self.config.doc_maxlen
                pooled = getattr(self.config, "pool_factor", 1) not in (None, 1)  # colbert-ai's token pooling
                if pooled or encoder.doc_tokens(self.checkpoint, missing[:1], maxlen) is None:  # or a slow tokenizer
                    embs, doclens = original(self, missing)
                else:
                    tokens = encoder.doc_tokens(self.checkpoint, missing, maxlen)
                    assert tokens is not None  # a fast tokenizer, as checked above
                    e, d = encoder.encode_tokens(self.checkpoint, *tokens, self.config.index_bsize,
                                                 torch.float16 if self.use_gpu else torch.float32)
                    embs, doclens = torch.from_numpy(e), d.tolist()
                # on the host (colbert-ai moves each compression batch to the GPU itself),
                # in the dtype colbert-ai checks for: float16 with a GPU, float32 without
                embs = embs.cpu().to(torch.float16 if self.use_gpu else torch.float32)
                offset = 0
                for text, n in zip(missing, doclens, strict=True):
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
            return clustering.kmeans(sample, num_partitions, kmeans_niters, device="cuda" if use_gpu else "cpu")

        def faiss_kmeans(dim: int, num_partitions: int, kmeans_niters: int, shared_lists: Any, return_value_queue: Any = None) -> Any:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            centroids = clustering.kmeans(shared_lists[0][0], num_partitions, kmeans_niters, device=device)
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
            stages.close()


class _BuildStages:
    """The PLAID build's stages, told apart by the order of colbert-ai's encoding calls."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress if progress is not None else Progress(False)
        self.open: Any = None

    def before_encoding(self, sample: bool, n: int) -> None:
        if sample:
            self.switch("encoding", n, "passage")
        elif self.open is None or self.open.name != "PLAID compression":
            self.switch("PLAID compression", None, "passage")

    def after_encoding(self, sample: bool, n: int) -> None:
        if self.open is not None:
            self.open.update(n)
        if sample:  # k-means and bucket cutoffs run until the next encoding call
            self.switch("PLAID training", None, "step")

    def switch(self, name: str, total: int | None, unit: str) -> None:
        self.close()
        self.open = self.progress.stage(name, total=total, unit=unit)

    def close(self) -> None:
        if self.open is not None:
            self.open.close()
            self.open = None


_PLAID_BUILD_LOCK = threading.Lock()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def build(
    engine: encoder.Encoder, texts: Sequence[str], ids: Sequence[str], dest: Path, *, max_tokens: int,
    progress: Progress | None = None,
) -> None:
    """Build a PLAID index of ``texts`` (document ids ``ids``) under ``dest`` with ragatouille."""
    dest.mkdir(parents=True, exist_ok=True)
    rag = engine.load(index_root=str(dest))
    device = checkpoint_device(rag.model.inference_ckpt)
    try:
        with quiet(engine.verbose), plaid_build_patches(engine.precision, progress):
            path = rag.index(
                collection=list(texts),
                document_ids=list(ids),
                index_name="plaid",
                overwrite_index="force_silent_overwrite",
                max_document_length=max_tokens + 3,
                split_documents=False,
                **plaid_build_options(device, len(texts)),
            )
    except (RuntimeError, ValueError, AssertionError, IndexError, KeyError) as exc:
        raise EngineError(f"PLAID index build failed: {type(exc).__name__}: {exc}") from exc
    (dest / "plaid_path").write_text(os.path.relpath(path, dest), encoding="utf-8")


class PlaidIndex:
    """A PLAID index built by ragatouille, opened with ``from_index``."""

    backend = "plaid"

    def __init__(self, engine: encoder.Encoder, engine_dir: Path, texts: Sequence[str]) -> None:
        ragatouille = import_ragatouille()
        try:
            rel = (engine_dir / "plaid_path").read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as exc:
            raise EngineError(f"PLAID index in {engine_dir} could not be opened: {exc}") from exc
        path = engine_dir / rel
        self.engine = engine
        self.n = len(texts)
        try:
            # it loads the checkpoint too: ours, wherever the index says it was built
            with load_lock(), quiet(engine.verbose), index_checkpoint(path, engine.model_path):
                self.rag = ragatouille.RAGPretrainedModel.from_index(str(path), verbose=0)
        except (OSError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
            raise EngineError(f"PLAID index {path} could not be opened: {type(exc).__name__}: {exc}") from exc
        self._pid_of = {doc_id: pid for pid, doc_id in self.rag.model.pid_docid_map.items()}
        self._ids = [self.rag.model.pid_docid_map[p] for p in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def search(self, queries: Sequence[str], k: int, subset: Any = None) -> list[list[tuple[int, float]]]:
        """The ``k`` best (chunk position, score) of each query, best first (the engine's ``Hits``).

        ``subset`` (an int array of chunk positions, or None for all): rank
        only those chunks, and return ``min(k, len(subset))`` of them
        whatever their share of the index (see :meth:`search_subset`).
        """
        if subset is not None:
            return self.search_subset(queries, k, subset)
        if self.n == 0:
            return [[] for _ in queries]
        k = min(k, self.n)
        try:
            with quiet(self.engine.verbose):
                res = self.rag.search(list(queries), k=k)
        except (RuntimeError, ValueError, AssertionError, IndexError, KeyError) as exc:
            raise EngineError(f"PLAID search failed: {type(exc).__name__}: {exc}") from exc
        if len(queries) == 1 and res and isinstance(res[0], dict):
            res = [res]  # ragatouille flattens single-query results
        return [[(int(r["passage_id"]), float(r["score"])) for r in hits] for hits in res]

    #: Subsets of at most this many chunks are scored exhaustively.
    exhaustive_max = 2048
    #: Chunks decompressed and scored together on the exhaustive route.
    exhaustive_block = 1024

    def search_subset(self, queries: Sequence[str], k: int, subset: Any) -> list[list[tuple[int, float]]]:
        """The ``k`` best hits among the chunks at positions ``subset``, through colbert-ai's searcher.

        A subset of at most :attr:`exhaustive_max` chunks is scored
        exhaustively: colbert-ai's ``dense_search(pids=...)`` ranks every
        chunk of it on its decompressed embeddings (PLAID's full-precision
        stage, with no centroid pruning), block by block. A larger subset
        restricts colbert-ai's candidates (``filter_fn``) as its centroid
        search generates them; where fewer than ``k`` candidates survive,
        the query falls back to the exhaustive route. Either way a query gets
        ``min(k, len(subset))`` hits.
        """
        import numpy as np
        import torch

        subset = np.asarray(subset, dtype=np.int64)
        if len(subset) == 0 or self.n == 0:
            return [[] for _ in queries]
        k = min(k, len(subset))
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[torch.from_numpy(subset)] = True

        def restrict(pids: Any) -> Any:
            return pids[mask.to(pids.device)[pids.long()]]

        out: list[list[tuple[int, float]]] = []
        try:
            with quiet(self.engine.verbose):
                searcher = self._searcher(queries[0])
                for q in queries:
                    with self._configured(searcher, q, k):
                        Q = searcher.encode(q)
                        hits: list[tuple[int, float]] = []
                        if len(subset) > self.exhaustive_max:
                            pids, _, scores = searcher.dense_search(Q, k, filter_fn=restrict)
                            hits = [(int(p), float(s)) for p, s in zip(pids, scores, strict=True)]
                        if len(hits) < k:
                            hits = self._exhaustive(searcher, Q, k, subset)
                    out.append(hits)
        except (RuntimeError, ValueError, AssertionError, IndexError, KeyError) as exc:
            raise EngineError(f"PLAID search failed: {type(exc).__name__}: {exc}") from exc
        return out

    def _exhaustive(self, searcher: Any, Q: Any, k: int, subset: Any) -> list[tuple[int, float]]:
        hits: list[tuple[int, float]] = []
        for s in range(0, len(subset), self.exhaustive_block):
            block = subset[s : s + self.exhaustive_block].tolist()
            pids, _, scores = searcher.dense_search(Q, min(k, len(block)), pids=block)
            hits.extend((int(p), float(v)) for p, v in zip(pids, scores, strict=True))
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[:k]

    def _searcher(self, warm_query: str) -> Any:
        """colbert-ai's ``Searcher`` that ragatouille opened (a first search through ragatouille opens it)."""
        model_index = self.rag.model.model_index
        if getattr(model_index, "searcher", None) is None:
            self.rag.search(warm_query, k=1)
        return model_index.searcher

    @contextlib.contextmanager
    def _configured(self, searcher: Any, query: str, k: int) -> Iterator[None]:
        """The searcher set up as ragatouille sets it for one query of ``k`` hits (query length, ncells, ndocs)."""
        config = searcher.config
        base_ncells, base_ndocs = config.ncells, config.ndocs
        if k > 32 * config.ncells:
            searcher.configure(ncells=min(k // 32 + 2, base_ncells))
        searcher.configure(ndocs=max(k * 4, base_ndocs))
        maxlen = min(max(int(len(query.split(" ")) * 1.35), 32), self.rag.model.base_model_max_tokens)
        config.query_maxlen = maxlen
        searcher.checkpoint.query_tokenizer.query_maxlen = maxlen
        try:
            yield
        finally:
            searcher.configure(ncells=base_ncells, ndocs=base_ndocs)

