"""Adapters for RAG frameworks, each an optional extra that installs only what it needs.

``colbert_modal.adapters.langchain`` (``pip install 'colbert-modal[langchain]'``)
    :class:`~colbert_modal.adapters.langchain.ColbertRetriever`, a LangChain
    ``BaseRetriever`` (sync and async), and
    :class:`~colbert_modal.adapters.langchain.ColbertReranker`, a document
    compressor that reorders given documents by MaxSim with the index's model.
``colbert_modal.adapters.llama_index`` (``pip install 'colbert-modal[llama-index]'``)
    :class:`~colbert_modal.adapters.llama_index.ColbertLlamaRetriever`, a
    LlamaIndex ``BaseRetriever`` returning ``NodeWithScore``.

``import colbert_modal`` imports neither; each module imports its framework at its top.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hit_metadata"]


def hit_metadata(hit: Any) -> dict[str, Any]:
    """A hit's metadata as the frameworks keep it, flat: the file's own metadata, then ours (ours win).

    ``source`` (the file), ``page`` (its first page, or None), ``pages``,
    ``score``, ``rank``, ``chunk_id`` and ``document_id``.
    """
    return {
        **hit.metadata,
        "source": hit.source,
        "page": hit.page,
        "pages": list(hit.pages),
        "score": hit.score,
        "rank": hit.rank,
        "chunk_id": hit.chunk_id,
        "document_id": hit.document_id,
    }
