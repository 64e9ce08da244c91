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
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import EngineError
from . import clustering, encoder
from ._upstream import import_ragatouille, load_lock, plaid_build_targets, quiet
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
def plaid_build_patches(precision: str | None = None) -> Iterator[None]:
    """What our PLAID builds change in colbert-ai/ragatouille, for one ``rag.index`` call.

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


_PLAID_BUILD_LOCK = threading.Lock()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def build(engine: encoder.Encoder, texts: Sequence[str], ids: Sequence[str], dest: Path, *, max_tokens: int) -> None:
    """Build a PLAID index of ``texts`` (document ids ``ids``) under ``dest`` with ragatouille."""
    dest.mkdir(parents=True, exist_ok=True)
    rag = engine.load(index_root=str(dest))
    device = checkpoint_device(rag.model.inference_ckpt)
    try:
        with quiet(engine.verbose), plaid_build_patches(engine.precision):
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
        _point_index_at_checkpoint(path, engine.model_path)
        try:
            with load_lock(), quiet(engine.verbose):  # it loads the checkpoint too
                self.rag = ragatouille.RAGPretrainedModel.from_index(str(path), verbose=0)
        except (OSError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
            raise EngineError(f"PLAID index {path} could not be opened: {type(exc).__name__}: {exc}") from exc
        self._pid_of = {doc_id: pid for pid, doc_id in self.rag.model.pid_docid_map.items()}
        self._ids = [self.rag.model.pid_docid_map[p] for p in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """The ``k`` best (chunk position, score) of each query, best first (the engine's ``Hits``)."""
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
