"""LangChain: a retriever over a :class:`~colbert_modal.ColbertIndexer`, and a MaxSim reranker.

``pip install 'colbert-modal[langchain]'`` (``langchain-core``)::

    from colbert_modal.adapters.langchain import ColbertRetriever, ColbertReranker

    retriever = ColbertRetriever(indexer=idx, k=5, where={"year": 2024})
    docs = retriever.invoke("refund policy")                  # or: await retriever.ainvoke(...)
    docs = retriever.invoke("refund policy", k=3, where=None)  # per call

Each hit is a ``Document``: the passage as ``page_content``, the chunk id as
``id``, and ``source``, ``page``, ``pages``, ``score``, ``rank``,
``chunk_id``, ``document_id`` plus the file's own metadata in ``metadata``
(see :func:`~colbert_modal.adapters.hit_metadata`). The async path awaits
``indexer.search.aio`` (a worker thread locally; modal's own async calls
remotely).

:class:`ColbertReranker` is a ``BaseDocumentCompressor``: it scores the
documents it is given (from any retriever) against the query by ColBERT
MaxSim with the index's model, in this process, and keeps the best ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ..indexer import ColbertIndexer
from . import hit_metadata

__all__ = ["ColbertReranker", "ColbertRetriever", "maxsim_scores", "to_document"]


def to_document(hit: Any) -> Document:
    """A :class:`~colbert_modal.SearchResult` as a LangChain ``Document``."""
    return Document(page_content=hit.text, metadata=hit_metadata(hit), id=hit.chunk_id)


class ColbertRetriever(BaseRetriever):
    """The ``k`` best passages of ``indexer`` for a query (``where`` as :meth:`ColbertIndexer.search` takes it).

    ``k`` and ``where`` given to ``invoke``/``ainvoke`` override the retriever's for that call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    indexer: ColbertIndexer
    k: int = 10
    where: dict[str, Any] | None = None

    def _args(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"k", "where"}
        if unknown:
            raise TypeError(f"ColbertRetriever takes k and where per call, not {sorted(unknown)}")
        return {"k": kwargs.get("k", self.k), "where": kwargs.get("where", self.where)}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return [to_document(h) for h in self.indexer.search(query, **self._args(kwargs))]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return [to_document(h) for h in await self.indexer.search.aio(query, **self._args(kwargs))]


class ColbertReranker(BaseDocumentCompressor):
    """Reorders documents by ColBERT MaxSim against the query with ``indexer``'s model; keeps the best ``k``.

    Each returned document is a copy with ``relevance_score`` (the MaxSim
    score, comparable to the index's own scores) in its metadata. The model
    runs in this process (``colbert-modal[local]``), whatever the indexer's mode.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    indexer: ColbertIndexer
    k: int = Field(default=5, ge=1)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        scores = maxsim_scores(self.indexer, query, [d.page_content for d in documents])
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[: self.k]
        return [
            documents[i].model_copy(update={"metadata": {**documents[i].metadata, "relevance_score": scores[i]}})
            for i in order
        ]


def maxsim_scores(indexer: ColbertIndexer, query: str, texts: Sequence[str]) -> list[float]:
    """ColBERT MaxSim of ``query`` against each of ``texts``, with the index's model (texts cut at its chunk size)."""
    import torch

    from ..engine import get_engine

    engine = get_engine(indexer.model, verbose=indexer.verbose, precision=indexer.precision)
    embs, lengths = engine.encode_documents(list(texts), max_tokens=indexer.max_tokens)
    Q = engine.encode_queries([query])[0]  # [qlen, dim]; masked query vectors are zero
    sims = Q @ torch.from_numpy(embs).float().T  # [qlen, n_tokens]
    return [
        float(part.amax(dim=1).sum()) if part.shape[1] else float("-inf")
        for part in torch.split(sims, [int(n) for n in lengths], dim=1)
    ]
