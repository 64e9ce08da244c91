"""``colbert_modal.adapters``: LangChain retriever and reranker, LlamaIndex retriever, against the real packages."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from colbert_modal import ColbertIndexer

langchain_core = pytest.importorskip("langchain_core")
llama_index_core = pytest.importorskip("llama_index.core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever as LangChainRetriever  # noqa: E402
from llama_index.core.retrievers import BaseRetriever as LlamaRetriever  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode  # noqa: E402

from colbert_modal.adapters.langchain import ColbertReranker, ColbertRetriever  # noqa: E402
from colbert_modal.adapters.llama_index import ColbertLlamaRetriever  # noqa: E402


@pytest.fixture
def shared(built_index: tuple[dict[str, Any], Any]) -> ColbertIndexer:
    kwargs, _ = built_index
    return ColbertIndexer("shared", **kwargs)


def test_import_colbert_modal_imports_no_framework() -> None:
    code = (
        "import sys, colbert_modal\n"
        "from colbert_modal import ColbertIndexer, SearchResult\n"
        "import colbert_modal.adapters\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'llama_index'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_langchain_retriever_sync_and_async_with_k_and_where(shared: ColbertIndexer) -> None:
    retriever = ColbertRetriever(indexer=shared, k=3)
    assert isinstance(retriever, LangChainRetriever)
    hits = shared.search("penguin quartz rhubarb", k=3)
    docs = retriever.invoke("penguin quartz rhubarb")
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 3
    assert [d.page_content for d in docs] == [h.text for h in hits]
    first, hit = docs[0], hits[0]
    assert first.id == hit.chunk_id and first.metadata["source"].endswith("bestiary.pdf")
    assert (first.metadata["page"], first.metadata["pages"]) == (hit.page, hit.pages) and hit.page is not None
    assert first.metadata["score"] == pytest.approx(hit.score) and first.metadata["rank"] == 1

    assert len(retriever.invoke("penguin", k=1)) == 1  # k per call
    only_notes = {"source": {"$glob": "*.md"}}
    assert shared.search("penguin", k=2, where=only_notes)  # the filter selects something
    filtered = ColbertRetriever(indexer=shared, k=2, where=only_notes).invoke("penguin")
    assert filtered and all(d.metadata["source"].endswith(".md") for d in filtered)
    per_call = retriever.invoke("penguin", where=only_notes)
    assert [d.id for d in per_call] == [h.chunk_id for h in shared.search("penguin", k=3, where=only_notes)]

    async def both() -> list[list[Document]]:
        return list(await asyncio.gather(
            retriever.ainvoke("penguin quartz rhubarb"), retriever.ainvoke("flamingo glacier", k=1, where=None)
        ))

    a, b = asyncio.run(both())
    assert [d.id for d in a] == [h.chunk_id for h in hits]
    assert len(b) == 1 and b[0].metadata["source"].endswith("atlas.pdf")
    with pytest.raises(TypeError, match="kk"):
        retriever.invoke("penguin", kk=2)


def test_langchain_documents_carry_the_files_metadata(
    built_index: tuple[dict[str, Any], Any], corpus_dir: Path, tmp_path: Path
) -> None:
    kwargs, _ = built_index
    idx = ColbertIndexer("meta", model=kwargs["model"], index_root=tmp_path, progress=False)
    idx.index([corpus_dir / "notes"], metadata={"meteor.md": {"year": 2024, "tags": ["sky"], "rank": "mine"}})
    (doc,) = ColbertRetriever(indexer=idx, k=1, where={"year": 2024}).invoke("meteor shower harbour")
    assert doc.metadata["source"].endswith("meteor.md")
    assert (doc.metadata["year"], doc.metadata["tags"]) == (2024, ["sky"])
    assert doc.metadata["rank"] == 1  # the hit's own fields win over a file's metadata of the same name


def test_reranker_scores_documents_by_maxsim_with_the_index_model(shared: ColbertIndexer) -> None:
    query = "flamingo glacier"
    hits = shared.search(query, k=6)
    given = [Document(page_content=h.text, metadata={"mine": i}) for i, h in enumerate(reversed(hits))]
    reranked = ColbertReranker(indexer=shared, k=4).compress_documents(given, query)
    assert len(reranked) == 4
    # the index's own MaxSim, recomputed over the given texts: each text's score, best first (ties in any order)
    score_of = {h.text: h.score for h in hits}
    assert [d.metadata["relevance_score"] for d in reranked] == pytest.approx([h.score for h in hits[:4]], rel=2e-2)
    assert [d.metadata["relevance_score"] for d in reranked] == pytest.approx(
        [score_of[d.page_content] for d in reranked], rel=2e-2)
    assert [d.page_content for d in reranked[:2]] == [h.text for h in hits[:2]]  # reversed given: reordered
    assert all(given[d.metadata["mine"]].page_content == d.page_content for d in reranked)  # their metadata kept
    assert ColbertReranker(indexer=shared).compress_documents([], query) == []
    extra = Document(page_content="A walrus and a penguin share an umbrella.")
    assert asyncio.run(ColbertReranker(indexer=shared, k=1).acompress_documents(given + [extra], "walrus umbrella"))[
        0].page_content == extra.page_content


def test_llama_index_retriever_returns_nodes_with_scores(shared: ColbertIndexer) -> None:
    retriever = ColbertLlamaRetriever(shared, k=3)
    assert isinstance(retriever, LlamaRetriever)
    hits = shared.search("penguin quartz rhubarb", k=3)
    nodes = retriever.retrieve("penguin quartz rhubarb")
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.node.node_id for n in nodes] == [h.chunk_id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    assert nodes[0].node.get_content() == hits[0].text
    assert nodes[0].node.metadata["source"].endswith("bestiary.pdf") and nodes[0].node.metadata["page"] == hits[0].page
    llm_view = nodes[0].node.get_metadata_str(MetadataMode.LLM)
    assert "chunk_id" not in llm_view and "source" in llm_view  # ids stay out of the LLM's view

    only_notes = {"source": {"$glob": "*.md"}}
    filtered = asyncio.run(ColbertLlamaRetriever(shared, k=2, where=only_notes).aretrieve("penguin"))
    assert [n.node.node_id for n in filtered] == [h.chunk_id for h in shared.search("penguin", k=2, where=only_notes)]
