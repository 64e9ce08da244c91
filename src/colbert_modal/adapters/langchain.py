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

__all__ = ["ColbertReranker", "ColbertRetriever", "to_document"]


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
    score, the one the index's own search gives) in its metadata. It is
    :meth:`ColbertIndexer.rerank <colbert_modal.ColbertIndexer.rerank>`: in
    this process or in the index's Searcher container, as the indexer's mode says.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    indexer: ColbertIndexer
    k: int = Field(default=5, ge=1)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        hits = self.indexer.rerank(query, [d.page_content for d in documents], k=self.k)
        return [
            documents[h.index].model_copy(
                update={"metadata": {**documents[h.index].metadata, "relevance_score": h.score}}
            )
            for h in hits
        ]
