"""LlamaIndex: a retriever over a :class:`~colbert_modal.ColbertIndexer` returning ``NodeWithScore``.

``pip install 'colbert-modal[llama-index]'`` (``llama-index-core``)::

    from colbert_modal.adapters.llama_index import ColbertLlamaRetriever

    retriever = ColbertLlamaRetriever(idx, k=5, where={"year": 2024})
    nodes = retriever.retrieve("refund policy")         # or: await retriever.aretrieve(...)
    query_engine = RetrieverQueryEngine.from_args(retriever)

Each hit is a ``TextNode`` (the chunk id as its id, the passage as its text,
the hit's metadata as :func:`~colbert_modal.adapters.hit_metadata` gives it)
with the hit's score. The async path awaits ``indexer.search.aio``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..indexer import ColbertIndexer
from . import hit_metadata

__all__ = ["ColbertLlamaRetriever", "to_node"]

#: Metadata kept out of what the LLM and embedders see (ids and numbers that mean nothing to them).
_HIDDEN = ["score", "rank", "chunk_id", "document_id", "pages"]


def to_node(hit: Any) -> NodeWithScore:
    """A :class:`~colbert_modal.SearchResult` as a LlamaIndex ``NodeWithScore``."""
    node = TextNode(
        id_=hit.chunk_id, text=hit.text, metadata=hit_metadata(hit),
        excluded_llm_metadata_keys=list(_HIDDEN), excluded_embed_metadata_keys=list(_HIDDEN),
    )
    return NodeWithScore(node=node, score=hit.score)


class ColbertLlamaRetriever(BaseRetriever):
    """The ``k`` best passages of ``indexer`` for a query, filtered by ``where`` (as ``search`` takes it)."""

    def __init__(
        self, indexer: ColbertIndexer, *, k: int = 10, where: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.indexer = indexer
        self.k = k
        self.where = dict(where) if where else None
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [to_node(h) for h in self.indexer.search(query_bundle.query_str, k=self.k, where=self.where)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.indexer.search.aio(query_bundle.query_str, k=self.k, where=self.where)
        return [to_node(h) for h in hits]
