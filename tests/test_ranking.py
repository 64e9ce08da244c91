"""The order of hits: equal scores broken by source, first page, position in the file (search.result_key).

The tiny "lexical" checkpoint scores a passage by the query words it holds,
so files with the same text score exactly the same: the corpus below has
ties everywhere, and at the k-th place for every k.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.records import SearchResult
from colbert_modal.search import result_key
from colbert_modal.sharding import merge_results
from helpers import write_texts

#: (file name, text): the same texts in several files, named so that neither build order nor shard order is theirs
#: The texts differ (an index keeps one copy of identical files) but hold the same words, so score the same.
TIED = {
    "m-dup.txt": "penguin walrus umbrella",
    "c-dup.txt": "walrus penguin umbrella",
    "x-dup.txt": "umbrella walrus penguin",
    "a-dup.txt": "penguin umbrella walrus",
    "q-half.txt": "penguin glacier harbour",
    "e-half.txt": "glacier penguin harbour",
    "k-half.txt": "harbour glacier penguin",
    "z-other.txt": "meteor nebula origami",
    "b-other.txt": "nebula meteor origami",
}
QUERIES = ["penguin walrus", "penguin", "meteor nebula", "glacier penguin umbrella"]


@pytest.fixture
def tied_docs(tmp_path: Path) -> Path:
    return write_texts(tmp_path / "tied", TIED)


@pytest.fixture
def kw(tmp_path: Path, colbert_checkpoint: Path) -> dict:
    return {"model": str(colbert_checkpoint), "index_root": str(tmp_path / "root"), "progress": False,
            "backend": "exact"}


def _listing(results: list[list[SearchResult]]) -> list[list[tuple[int, str, float]]]:
    return [[(r.rank, r.chunk_id, r.score) for r in hits] for hits in results]


def _check_tie_rule(hits: list[SearchResult]) -> None:
    assert hits == sorted(hits, key=result_key)
    assert [r.rank for r in hits] == list(range(1, len(hits) + 1))


def test_sharded_and_unsharded_give_the_same_list_ties_included(tied_docs: Path, kw: dict) -> None:
    one = ColbertIndexer("one", **kw)
    three = ColbertIndexer("three", shards=3, **kw)
    one.index([tied_docs])
    three.index([tied_docs])
    assert three.info().shards == 3
    first = one.search("penguin walrus", k=len(TIED))
    assert len({r.score for r in first[:4]}) == 1  # the corpus does tie
    for k in range(1, len(TIED) + 1):
        a, b = one.search_batch(QUERIES, k=k), three.search_batch(QUERIES, k=k)
        assert _listing(a) == _listing(b), k
        for hits in a:
            _check_tie_rule(hits)
    # ties come in source order: the four files with the text, a- c- m- x-
    top4 = one.search("penguin walrus", k=4)
    assert [Path(r.source).name for r in top4] == ["a-dup.txt", "c-dup.txt", "m-dup.txt", "x-dup.txt"]
    assert [Path(r.source).name for r in three.search("penguin walrus", k=2)] == ["a-dup.txt", "c-dup.txt"]
    # filtered, and the same query again (a fresh indexer, as after a restart)
    where = {"file_name": {"$in": ["x-dup.txt", "m-dup.txt", "k-half.txt", "e-half.txt"]}}
    for k in (1, 2, 3):
        assert _listing(one.search_batch(QUERIES, k=k, where=where)) == _listing(
            three.search_batch(QUERIES, k=k, where=where))
    again = ColbertIndexer("three", **kw)
    assert _listing(again.search_batch(QUERIES, k=3)) == _listing(three.search_batch(QUERIES, k=3))
    assert _listing(again.search_batch(QUERIES, k=3)) == _listing(one.search_batch(QUERIES, k=3))


def test_remote_sharded_gives_the_local_unsharded_list(tied_docs: Path, kw: dict, inprocess: Path) -> None:
    one = ColbertIndexer("one", **kw)
    one.index([tied_docs])
    with ColbertIndexer("rem", mode="remote", shards=3, **kw) as rem, \
            ColbertIndexer("rem1", mode="remote", **kw) as rem1:
        rem.index([tied_docs])
        rem1.index([tied_docs])
        for k in (1, 2, 3, 5):
            local = _listing(one.search_batch(QUERIES, k=k))
            assert _listing(rem.search_batch(QUERIES, k=k)) == local, k
            assert _listing(rem1.search_batch(QUERIES, k=k)) == local, k


def test_merge_results_breaks_ties_by_source_page_and_position() -> None:
    def hit(source: str, page: int, pos: int, score: float) -> SearchResult:
        return SearchResult(rank=9, score=score, text="t", source=source, pages=[page], chunk_id=f"d{source}-{pos}",
                            document_id=f"d{source}")

    a = [hit("/b", 1, 0, 5.0), hit("/b", 2, 10, 5.0)]
    b = [hit("/b", 2, 2, 5.0), hit("/a", 7, 3, 5.0 + 1e-12)]  # float64 noise below float32: still a tie
    c = [hit("/c", 1, 0, 6.0)]
    merged = merge_results([a, b, c], 4)
    assert [(r.source, r.page, r.chunk_id, r.rank) for r in merged] == [
        ("/c", 1, "d/c-0", 1), ("/a", 7, "d/a-3", 2), ("/b", 1, "d/b-0", 3), ("/b", 2, "d/b-2", 4)]
    assert merge_results([c, b, a], 4) == merged  # whatever the shards' order


def test_plaid_lists_follow_the_same_rule(tied_docs: Path, kw: dict, tmp_path: Path, monkeypatch) -> None:
    """PLAID (approximate) sorts the hits it finds by the same key; the same query gives the same list."""
    monkeypatch.chdir(tmp_path)
    words = "aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine kangaroo lantern".split()
    for i in range(30):  # enough tokens for PLAID's k-means; no two files alike
        text = " ".join(words[(i * 5 + j) % len(words)] for j in range(6)) + f". {' '.join(words[: 1 + i // 12])}"
        (tied_docs / f"filler{i:02d}.txt").write_text(text + f" {i}.\n", encoding="utf-8")
    idx = ColbertIndexer("plaid", **{**kw, "backend": "plaid"})
    idx.index([tied_docs])
    (tied_docs / "0-dup.txt").write_text("umbrella penguin walrus\n", encoding="utf-8")  # last in the index
    idx.index([tied_docs])
    assert idx.info().backend == "plaid"
    first = idx.search_batch(QUERIES, k=6)
    for hits in first:
        _check_tie_rule(hits)
    assert [Path(r.source).name for r in first[0][:5]] == ["0-dup.txt", "a-dup.txt", "c-dup.txt", "m-dup.txt",
                                                             "x-dup.txt"]
    assert _listing(ColbertIndexer("plaid", **{**kw, "backend": "plaid"}).search_batch(QUERIES, k=6)) == _listing(first)
