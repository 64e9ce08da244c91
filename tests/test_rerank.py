"""Rerank: a given list scored with a model (MaxSim), as the index scores its chunks; no index searched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import colbert_modal
from colbert_modal import ColbertIndexer, ConfigurationError
from colbert_modal.cli import cli
from colbert_modal.records import RerankResult
from helpers import write_texts

TEXTS = {
    "a.txt": "penguin walrus umbrella",
    "b.txt": "walrus penguin umbrella",  # ties with a.txt
    "c.txt": "penguin glacier harbour",
    "d.txt": "meteor nebula origami",
    "e.txt": "walrus volcano zeppelin",
}
QUERIES = ["penguin walrus", "meteor glacier", "umbrella"]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_texts(tmp_path / "docs", TEXTS)


@pytest.fixture
def kw(tmp_path: Path, colbert_checkpoint: Path) -> dict:
    return {"model": str(colbert_checkpoint), "index_root": str(tmp_path / "root"), "progress": False,
            "backend": "exact"}


def _as_search(hits: list[RerankResult]) -> list[tuple[str | None, str, float]]:
    return [(h.id, h.text, round(h.score, 4)) for h in hits]


def test_rerank_gives_the_index_search_scores_and_order(docs: Path, kw: dict, colbert_checkpoint: Path) -> None:
    idx = ColbertIndexer("r", **kw)
    idx.index([docs])
    for q in QUERIES:
        found = idx.search(q, k=len(TEXTS))
        # the index's own chunks, given in reverse and with their source as id (the tie rule then agrees)
        records = [{"text": h.text, "id": h.source, "metadata": {"page": h.page}} for h in reversed(found)]
        for reranked in (idx.rerank(q, records), colbert_modal.rerank(q, records, model=colbert_checkpoint)):
            assert [r.id for r in reranked] == [h.source for h in found], q
            assert [r.rank for r in reranked] == list(range(1, len(TEXTS) + 1))
            for r, h in zip(reranked, found, strict=True):
                assert r.score == pytest.approx(h.score, abs=1e-4)
                assert r.text == h.text and r.index == len(found) - h.rank and r.metadata == {"page": h.page}
        # search results themselves can be reranked (id: the chunk id); k keeps the best
        best = idx.rerank(q, found, k=2)
        by_chunk_id = sorted(found, key=lambda h: (-round(h.score, 4), h.chunk_id))  # ties: by id
        assert [r.id for r in best] == [h.chunk_id for h in by_chunk_id[:2]]
    assert len({h.score for h in idx.rerank("penguin walrus", [TEXTS["a.txt"], TEXTS["b.txt"]])}) == 1


def test_rerank_ties_by_id_then_position_the_same_every_time(kw: dict) -> None:
    idx = ColbertIndexer("no-index-needed", **kw)
    texts = ["walrus penguin", "penguin walrus", "meteor", "penguin walrus"]
    plain = idx.rerank("penguin walrus", texts)
    assert [r.index for r in plain] == [0, 1, 3, 2] and plain[0].id is None
    assert not idx.store.exists()  # nothing was built or searched
    records = [{"text": t, "id": i} for t, i in zip(texts, ["z", "m", "x", "a"], strict=True)]
    by_id = idx.rerank("penguin walrus", records)
    assert [r.id for r in by_id] == ["a", "m", "z", "x"]
    assert all(idx.rerank("penguin walrus", records) == by_id for _ in range(3))
    assert idx.rerank("penguin walrus", records, k=1) == by_id[:1]


@pytest.mark.parametrize(
    ("texts", "fragment"),
    [
        ("one string", "list of texts"),
        ({"text": "a dict"}, "list of texts"),
        (42, "list of texts"),
        ([], "empty"),
        (["fine", 7], "item 1 (7)"),
        (["fine", "  "], "item 1"),
        ([{"id": "x"}], "item 0"),
        ([{"text": "t", "txt": "typo"}], "unknown keys ['txt']"),
        ([{"text": "t", "id": 3.5}], "item 0"),
        ([{"text": "t", "metadata": ["not", "a", "dict"]}], "item 0"),
        ([object()], "item 0"),
    ],
)
def test_bad_input_is_a_configuration_error_naming_the_item(kw: dict, texts: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as exc:
        ColbertIndexer("r", **kw).rerank("penguin", texts)
    assert fragment in str(exc.value)
    with pytest.raises(ConfigurationError):
        colbert_modal.rerank("penguin", texts, model="/no/such/model")  # checked before any model loads


def test_bad_k_query_and_max_tokens(kw: dict) -> None:
    idx = ColbertIndexer("r", **kw)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigurationError, match="k must be"):
            idx.rerank("penguin", ["t"], k=bad)
    with pytest.raises(ConfigurationError):
        idx.rerank("  ", ["t"])
    with pytest.raises(ConfigurationError, match="one query string"):
        colbert_modal.rerank(["two", "queries"], ["t"])
    with pytest.raises(ConfigurationError, match="max_tokens"):
        colbert_modal.rerank("penguin", ["t"], max_tokens=4)


def test_remote_rerank_runs_in_the_searcher(docs: Path, kw: dict, inprocess: Path) -> None:
    local = ColbertIndexer("one", **kw)
    local.index([docs])
    records = [{"text": t, "id": n} for n, t in TEXTS.items()]
    want = [_as_search(local.rerank(q, records)) for q in QUERIES]
    with ColbertIndexer("rem", mode="remote", **kw) as rem, \
            ColbertIndexer("rem3", mode="remote", shards=3, **kw) as rem3:
        rem.index([docs])
        rem3.index([docs])
        for r in (rem, rem3):
            assert [_as_search(r.rerank(q, records)) for q in QUERIES] == want
        # the model of the index on the Volume when the indexer names none
        bare = ColbertIndexer("rem", mode="remote", index_root=kw["index_root"], progress=False)
        assert _as_search(bare.rerank(QUERIES[0], records)) == want[0]
        bare.close()
        with pytest.raises(ConfigurationError, match="item 0"):
            rem.rerank("penguin", [3])


def test_cli_rerank_texts_files_and_jsonl(docs: Path, kw: dict, tmp_path: Path) -> None:
    ColbertIndexer("r", **kw).index([docs])
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"text": "meteor penguin", "id": "rec-1", "metadata": {"y": 1}}) + "\n\n"
                     + json.dumps("glacier only") + "\n", encoding="utf-8")
    args = ["rerank", "penguin walrus", "--name", "r", "--index-root", kw["index_root"],
            str(docs / "a.txt"), "walrus alone", str(jsonl)]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.stdout)
    assert [h["index"] for h in hits] == [0, 1, 2, 3]  # a.txt's text holds both words, then one, ...
    assert hits[0]["text"] == TEXTS["a.txt"] + "\n" and hits[2]["id"] == "rec-1" and hits[2]["metadata"] == {"y": 1}
    text = CliRunner().invoke(cli, [*args, "-k", "2"])
    assert text.exit_code == 0 and text.stdout.splitlines()[0].startswith("1. #0  score ")
    assert len(text.stdout.splitlines()) == 2
    jsonl.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code == 2 and f"{jsonl}, line 2: not JSON" in bad.stderr
