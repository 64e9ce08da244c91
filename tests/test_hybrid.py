"""Hybrid search: the keyword (BM25, SQLite FTS5) index beside the ColBERT index, and ``mode=``.

The keyword file is part of every generation (written at seal, checksummed,
published, pruned with it); these check that it stays in step through
updates and a kill -9, that sharded and unsharded indexes rank alike, that
``where`` filters it, that user text never reaches FTS5 as syntax, and that
the modes reach the CLI, the HTTP API and the remote Searcher. The real
engine runs with the tiny checkpoint throughout.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.errors import ConfigurationError, IndexStorageError
from colbert_modal.keyword import KEYWORD_FILE, KeywordIndex, query_terms
from colbert_modal.store import IndexStore
from helpers import kill_when_reached

#: The target's docket number; the distractor holds the same characters in another order, which the
#: tiny checkpoint (it reads unknown words as word pieces of one character) scores the same, as a model whose
#: tokenizer splits an identifier into pieces often cannot.
DOCKET = "FAA-2020-0839"
TEXTS = {
    "a-notice.txt": "Comments on docket FA-2002-0389 were due in the spring.",
    "b-docket.txt": f"Comments on docket {DOCKET} were due in the spring.",
    "c-animals.txt": "The walrus and the penguin met by the glacier harbour at night.",
    "d-rules.txt": "Section 39.13 of the rules: the saffron rhubarb quartz umbrella.",
    "e-sky.txt": "The volcano meteor nebula and the kangaroo lantern in the tornado.",
}


def _write(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text + "\n", encoding="utf-8")
    return folder


def _names(hits) -> list[str]:
    return [Path(h.source).name for h in hits]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return _write(tmp_path / "docs", TEXTS)


@pytest.fixture
def kw(tmp_path: Path, colbert_checkpoint: Path) -> dict:
    return {"model": str(colbert_checkpoint), "index_root": str(tmp_path / "root"), "progress": False,
            "backend": "exact"}


@pytest.fixture
def built(docs: Path, kw: dict) -> ColbertIndexer:
    idx = ColbertIndexer("hyb", **kw)
    idx.index([docs])
    return idx


def _keyword_rows(idx: ColbertIndexer) -> int:
    gen = idx.store.current()
    with sqlite3.connect(gen.path / KEYWORD_FILE) as con:
        return con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]


def test_an_identifier_colbert_misses_is_found_by_keyword_and_hybrid(built: ColbertIndexer) -> None:
    colbert = built.search(DOCKET, k=3)
    assert _names(colbert)[0] == "a-notice.txt"  # ColBERT alone ranks the look-alike first ...
    assert colbert[0].score == pytest.approx(colbert[1].score)  # ... it cannot tell the two apart
    assert _names(built.search(DOCKET, k=3, mode="keyword")) == ["b-docket.txt"]  # only the exact docket
    hybrid = built.search(DOCKET, k=3, mode="hybrid")
    assert _names(hybrid)[0] == "b-docket.txt"
    assert hybrid[0].score == pytest.approx(1 / 61 + 1 / 62)  # BM25's first, ColBERT's second
    assert [h.rank for h in hybrid] == [1, 2, 3]
    # a part of the identifier, and a section number, are whole terms too
    assert _names(built.search("2020-0839", k=3, mode="keyword")) == ["b-docket.txt"]
    assert _names(built.search("§ 39.13", k=3, mode="keyword")) == ["d-rules.txt"]
    # keyword_weight 0: hybrid is ColBERT's order
    assert _names(built.search(DOCKET, k=3, mode="hybrid", keyword_weight=0)) == _names(colbert)


def test_keyword_scores_are_fts5_bm25(built: ColbertIndexer) -> None:
    gen = built.store.current()
    assert KEYWORD_FILE in gen.manifest.checksums  # published with the generation, under its checksums
    with sqlite3.connect(gen.path / KEYWORD_FILE) as con:
        rows = con.execute("SELECT rowid, -bm25(chunks) FROM chunks WHERE chunks MATCH "
                           "'\"the\" OR \"walrus\" OR \"spring\"' ORDER BY rowid").fetchall()
    chunks = gen.chunks()
    hits = {h.chunk_id: h.score for h in built.search("the walrus spring", k=10, mode="keyword")}
    assert hits == pytest.approx({chunks[pid].id: score for pid, score in rows}, rel=1e-9)


def test_tokens_keep_identifiers_whole_and_split() -> None:
    assert query_terms([DOCKET, "§ 39.13.", "PN/123-A", "end of sentence."]) == [
        ["0839", "2020", "faa", "faa-2020-0839"], ["13", "39", "39.13"], ["123", "a", "pn", "pn/123-a"],
        ["end", "of", "sentence"]]


@pytest.mark.parametrize("query", ['"unbalanced', "walrus*", "NEAR(walrus penguin)", "(walrus OR", "walrus AND -",
                                   "col:walrus", "^walrus", "walrus NOT penguin", "\"\"\"", "'; DROP TABLE chunks;--"])
def test_fts_syntax_in_a_query_is_plain_text(built: ColbertIndexer, query: str) -> None:
    for mode in ("keyword", "hybrid"):
        hits = built.search(query, k=5, mode=mode)
        if "walrus" in query and mode == "keyword":
            assert _names(hits)[0] == "c-animals.txt"
    assert _keyword_rows(built) == len(TEXTS)


@pytest.mark.parametrize(("how", "field"), [({"mode": "bm25"}, "mode"), ({"mode": None}, "mode"),
                                            ({"mode": "hybrid", "keyword_weight": -1}, "keyword_weight"),
                                            ({"mode": "hybrid", "keyword_weight": float("nan")}, "keyword_weight"),
                                            ({"mode": "hybrid", "keyword_weight": "2"}, "keyword_weight")])
def test_bad_mode_or_weight(built: ColbertIndexer, how: dict, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        built.search("walrus", **how)
    with pytest.raises(ConfigurationError, match=field):
        built.search_batch(["walrus"], **how)


def test_where_filters_keyword_hits(built: ColbertIndexer, docs: Path) -> None:
    where = {"file_name": "a-notice.txt"}
    assert _names(built.search(DOCKET, k=5, mode="keyword", where=where)) == []  # the docket is elsewhere
    assert _names(built.search("comments docket", k=5, mode="keyword", where=where)) == ["a-notice.txt"]
    hybrid = built.search(DOCKET, k=5, mode="hybrid", where={"file_name": {"$in": ["b-docket.txt", "e-sky.txt"]}})
    assert sorted(_names(hybrid)) == ["b-docket.txt", "e-sky.txt"]
    assert _names(hybrid)[0] == "b-docket.txt"


def test_keyword_index_stays_in_step_through_updates(built: ColbertIndexer, docs: Path) -> None:
    (docs / "f-new.txt").write_text("Docket ZK-2021-1234 was opened later.\n", encoding="utf-8")  # add
    built.index([docs])
    assert _names(built.search("ZK-2021-1234", k=3, mode="keyword")) == ["f-new.txt"]
    (docs / "b-docket.txt").write_text("Comments on docket ZQ-2022-7777 were due.\n", encoding="utf-8")  # change
    built.index([docs])
    assert _names(built.search(DOCKET, k=3, mode="keyword")) == []
    assert _names(built.search("ZQ-2022-7777", k=3, mode="keyword")) == ["b-docket.txt"]
    (docs / "e-sky.txt").unlink()  # delete (a file gone from the folder)
    built.index([docs])
    built.delete([docs / "c-animals.txt"])  # delete by path
    assert _names(built.search("nebula walrus", k=3, mode="keyword")) == []
    (docs / "c-animals.txt").unlink()
    built.index([docs], metadata={"f-new.txt": {"year": 2021}})  # metadata only: nothing encoded
    assert _names(built.search("docket", k=5, mode="keyword", where={"year": 2021})) == ["f-new.txt"]
    gen = built.store.current()
    assert _keyword_rows(built) == len(gen.chunks()) == 4
    assert gen.manifest.checksums[KEYWORD_FILE].startswith("sha256:")


def test_a_damaged_keyword_file_is_refused(built: ColbertIndexer) -> None:
    path = built.store.current().path / KEYWORD_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = ColbertIndexer("hyb", index_root=built.index_root)
    with pytest.raises(IndexStorageError, match=KEYWORD_FILE):
        fresh.search("walrus", mode="keyword")


def test_an_index_made_before_keyword_files_builds_one_in_memory(built: ColbertIndexer) -> None:
    expected = {m: built.search_batch([DOCKET, "walrus"], k=3, mode=m) for m in ("keyword", "hybrid")}
    gen = built.store.current()
    (gen.path / KEYWORD_FILE).unlink()  # as an older release wrote it: no file, no checksum
    manifest = json.loads((gen.path / "manifest.json").read_text())
    del manifest["checksums"][KEYWORD_FILE]
    (gen.path / "manifest.json").write_text(json.dumps(manifest))
    old = ColbertIndexer("hyb", index_root=built.index_root)
    assert old.search(DOCKET, k=3) == built.search(DOCKET, k=3)  # colbert as before
    for mode, results in expected.items():
        assert old.search_batch([DOCKET, "walrus"], k=3, mode=mode) == results
    assert not (gen.path / KEYWORD_FILE).exists()  # nothing written into a published generation


def test_keyword_index_in_memory_matches_the_file(tmp_path: Path) -> None:
    from colbert_modal.keyword import build_keyword_file

    texts = list(TEXTS.values())
    build_keyword_file(tmp_path / "k.sqlite", texts)
    on_disk, in_memory = KeywordIndex.open(tmp_path / "k.sqlite"), KeywordIndex.in_memory(texts)
    for q in (DOCKET, "the walrus", "39.13 rules"):
        assert on_disk.search(q, 5) == in_memory.search(q, 5)


def test_sharded_and_unsharded_rank_alike_ties_included(tmp_path: Path, kw: dict) -> None:
    texts = dict(TEXTS)
    texts.update({f"dup-{i}.txt": "The walrus and the penguin met by the glacier harbour at night." for i in range(4)})
    texts.update({f"id-{i}.txt": f"Part PN-{i}00 of docket {DOCKET} and the walrus." for i in range(3)})
    docs = _write(tmp_path / "many", texts)
    one = ColbertIndexer("one", **kw)
    one.index([docs])
    three = ColbertIndexer("three", **{**kw, "shards": 3})
    three.index([docs])
    assert three.info().shards == 3
    queries = [DOCKET, "walrus penguin glacier", "docket walrus", "PN-100", "nothing matches zzz"]
    for mode in ("keyword", "hybrid"):
        for k in (1, 2, 3, 5, 20):
            a = one.search_batch(queries, k=k, mode=mode)
            b = three.search_batch(queries, k=k, mode=mode)
            assert [[(h.chunk_id, h.score) for h in r] for r in a] == [[(h.chunk_id, h.score) for h in r] for r in b]
        where = {"file_name": {"$in": ["dup-1.txt", "dup-3.txt", "id-2.txt", "b-docket.txt"]}}
        assert one.search_batch(queries, k=3, mode=mode, where=where) == three.search_batch(
            queries, k=3, mode=mode, where=where)


_KILLED_MID_KEYWORD_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from colbert_modal import ColbertIndexer, store

    def slow_build(path, texts):
        path.write_bytes(b"SQLite format 3\\x00 half written")  # half the keyword file is on disk ...
        Path(sys.argv[3]).write_text("building")                 # ... tell the test, then hang
        time.sleep(600)

    store.build_keyword_file = slow_build
    idx = ColbertIndexer("hyb", index_root=sys.argv[2], progress=False)
    idx.index([sys.argv[4]])
    """
)


def test_kill_9_while_the_keyword_file_is_written_leaves_the_published_one(
        built: ColbertIndexer, docs: Path, tmp_path: Path) -> None:
    before = built.search(DOCKET, k=3, mode="hybrid")
    (docs / "f-new.txt").write_text("Docket ZK-2021-1234 was opened later.\n", encoding="utf-8")
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MID_KEYWORD_BUILD, built.model, str(built.index_root),
                             str(marker), str(docs)])
    kill_when_reached(proc, marker, "the keyword file")
    store = IndexStore(built.index_root, "hyb")
    assert [p for p in (store.path / "generations").glob(".g*/" + KEYWORD_FILE)]  # the half-written file
    reopened = ColbertIndexer("hyb", index_root=built.index_root)
    assert reopened.search(DOCKET, k=3, mode="hybrid") == before  # the published generation, keyword file intact
    assert reopened.search("ZK-2021-1234", k=3, mode="keyword") == []
    reopened.index([docs])  # the next writer cleans up and completes the update
    assert not list((store.path / "generations").glob(".g*"))
    assert _names(reopened.search("ZK-2021-1234", k=3, mode="keyword")) == ["f-new.txt"]
    assert _keyword_rows(reopened) == len(TEXTS) + 1


def test_inprocess_remote_searches_with_mode(built: ColbertIndexer, kw: dict, inprocess: Path, docs: Path) -> None:
    """Remote mode (the Modal bodies run here on a folder standing in for the Volume), sharded and not."""
    for shards in (1, 2):
        with ColbertIndexer(f"r{shards}", mode="remote", **{**kw, "shards": shards}) as remote:
            remote.index([docs])
            for mode in ("keyword", "hybrid"):
                expected = built.search_batch([DOCKET, "walrus"], k=3, mode=mode)
                assert remote.search_batch([DOCKET, "walrus"], k=3, mode=mode) == expected
                assert asyncio.run(remote.search_batch.aio([DOCKET, "walrus"], k=3, mode=mode)) == expected  # .aio
            assert _names(remote.search(DOCKET, k=1, mode="hybrid", where={"file_name": "b-docket.txt"})) == [
                "b-docket.txt"]


def test_cli_mode_and_hybrid(built: ColbertIndexer) -> None:
    from click.testing import CliRunner

    from colbert_modal.cli import cli

    def run(*args: str, code: int = 0):
        result = CliRunner().invoke(cli, ["search", DOCKET, "-n", "hyb", "--index-root", str(built.index_root),
                                          "-k", "2", "--json", *args])
        assert result.exit_code == code, result.output
        return result

    for args, mode in ((["--hybrid"], "hybrid"), (["--mode", "keyword"], "keyword"), ([], "colbert")):
        hits = json.loads(run(*args).stdout)
        assert [h["chunk_id"] for h in hits] == [h.chunk_id for h in built.search(DOCKET, k=2, mode=mode)]
    assert "b-docket.txt" in json.loads(run("--hybrid").stdout)[0]["source"]
    weighted = json.loads(run("--hybrid", "--keyword-weight", "0").stdout)
    assert [h["chunk_id"] for h in weighted] == [h.chunk_id for h in built.search(DOCKET, k=2)]
    assert "disagree" in run("--hybrid", "--mode", "keyword", code=2).output
    assert "bm25" in run("--mode", "bm25", code=2).output


def test_http_mode(built: ColbertIndexer) -> None:
    from starlette.testclient import TestClient

    from colbert_modal.http import create_app

    with TestClient(create_app(index_root=built.index_root)) as client:
        r = client.post("/search", json={"index": "hyb", "query": DOCKET, "k": 2, "mode": "hybrid"})
        assert r.status_code == 200, r.text
        assert [h["chunk_id"] for h in r.json()["hits"]] == [h.chunk_id for h in built.search(DOCKET, k=2,
                                                                                              mode="hybrid")]
        r = client.post("/search_batch", json={"index": "hyb", "queries": [DOCKET], "mode": "keyword",
                                               "keyword_weight": 2})
        assert r.status_code == 200, r.text
        assert [h["chunk_id"] for h in r.json()["results"][0]["hits"]] == [
            h.chunk_id for h in built.search(DOCKET, mode="keyword")]
        for body, field in (({"mode": "bm25"}, "mode"), ({"mode": "hybrid", "keyword_weight": "x"}, "keyword_weight"),
                            ({"mode": 3}, "mode")):
            for path, extra in (("/search", {"query": DOCKET}), ("/search_batch", {"queries": [DOCKET]})):
                r = client.post(path, json={"index": "hyb", **extra, **body})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["field"] == field
        schema = client.get("/openapi.json").json()["components"]
        assert "mode" in schema["SearchRequest"]["properties"] and "mode" in schema["SearchBatchRequest"]["properties"]


def test_search_page_mode_select(built: ColbertIndexer) -> None:
    """Headless Chromium opens /?q=...&mode=hybrid: the page asks for hybrid hits (its select keeps the mode)."""
    httpx = pytest.importorskip("httpx")
    from test_search_page import browse, find_chromium, start_server

    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium found (scripts/install-chromium installs Debian's chromium)")
    proc, base = start_server(built.index_root, "-n", "hyb")
    try:
        warm = httpx.post(f"{base}/search", json={"index": "hyb", "query": DOCKET, "mode": "hybrid"}, timeout=120)
        assert warm.status_code == 200, warm.text
        dom = {m: browse(browser, f"{base}/?q={DOCKET}&index=hyb&k=2&mode={m}") for m in ("hybrid", "colbert")}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    for mode, page in dom.items():
        assert 'data-state="done"' in page, page[-3000:]
        first = built.search(DOCKET, k=2, mode=mode)[0]
        assert page.index(Path(first.source).name) < page.index(
            "a-notice.txt" if mode == "hybrid" else "b-docket.txt")
        assert f"score {first.score:.2f}" in page
