"""Sharded indexes: split by document, built shard by shard, searched and merged.

The evidence the issue asks for: with the exact backend a sharded index
gives the unsharded index's results (locally, and through the real Modal
bodies via ``.local()``); one failing shard leaves the previous generation
intact and searchable; an update touches only the shards whose files
changed. The real engine runs with the tiny checkpoint throughout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal import sharding
from colbert_modal.errors import ConfigurationError, SettingsMismatchError, ShardBuildError
from colbert_modal.records import SearchResult
from colbert_modal.pipeline import Settings, UpdatePlan
from colbert_modal.store import FileEntry

from conftest import write_corpus
from helpers import assert_same_results

QUERIES = [
    "penguin quartz walrus",
    "meteor glacier harbour",
    "aardvark bicycle carousel",
    "hello font letters",
    "umbrella volcano",
    "kangaroo lantern nebula",
]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


@pytest.fixture
def kw(tmp_path: Path, colbert_checkpoint: Path) -> dict:
    return {"model": str(colbert_checkpoint), "index_root": str(tmp_path / "root"), "progress": False,
            "backend": "exact"}


def _three_files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of three one-line text files: with shards=3, one file per shard."""
    docs = tmp_path / "three-files"
    docs.mkdir()
    texts = {"a.txt": "aardvark bicycle carousel", "b.txt": "penguin quartz walrus", "c.txt": "meteor glacier harbour"}
    for name, text in texts.items():
        (docs / name).write_text(text + "\n", encoding="utf-8")
    return docs, texts


def _shard_gens(indexer: ColbertIndexer) -> dict[str, str | None]:
    top = json.loads((indexer.store.current().path / "manifest.json").read_text())
    return {sid: v["generation"] for sid, v in top["shards"].items()}


def test_sharded_exact_search_equals_unsharded(docs: Path, kw: dict) -> None:
    one = ColbertIndexer("one", **kw)
    three = ColbertIndexer("three", shards=3, **kw)
    r1, r3 = one.index([docs]), three.index([docs])
    assert r3.chunks_total == r1.chunks_total and r3.documents_total == r1.documents_total
    assert sorted(r3.indexed) == sorted(r1.indexed) and r3.skipped == r1.skipped

    info = three.info()
    assert info.shards == 3 and sum(info.shard_chunks.values()) == info.chunks == r1.chunks_total
    assert all(n > 0 for n in info.shard_chunks.values())  # 7 files over 3 shards: none empty
    top = three.store.current().manifest
    for path, entry in top.files.items():  # by document: a file's chunks all live in its shard
        shard_gen = sharding.shard_generation(three.store.current(), entry.shard)
        assert set(entry.chunk_ids) <= {c.id for c in shard_gen.chunks()}, path

    for k in (1, 3, 10, 100):
        assert_same_results(one.search_batch(QUERIES, k=k), three.search_batch(QUERIES, k=k))
    assert_same_results([one.search("walrus penguin")], [three.search("walrus penguin")])
    where = {"file_name": {"$in": ["atlas.pdf", "plain.txt"]}}
    assert_same_results(one.search_batch(QUERIES, k=5, where=where), three.search_batch(QUERIES, k=5, where=where))
    # a fresh indexer (as after a restart) opens the shards from disk
    assert_same_results(one.search_batch(QUERIES, k=5), ColbertIndexer("three", **kw).search_batch(QUERIES, k=5))


def test_a_sharded_search_encodes_the_queries_once(tmp_path: Path, kw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert_modal.engine import encoder

    docs, _ = _three_files(tmp_path)
    three = ColbertIndexer("three", shards=3, **kw)
    three.index([docs])
    three.search("warm up")  # loads the shards
    encoded: list[tuple[str, ...]] = []
    real = encoder.Encoder._encode_queries

    def counting(self, queries):
        encoded.append(tuple(queries))
        return real(self, queries)

    monkeypatch.setattr(encoder.Encoder, "_encode_queries", counting)
    hits = three.search_batch(["walrus penguin", "meteor harbour"], k=3)
    assert encoded == [("walrus penguin", "meteor harbour")]  # not once per shard
    assert hits[0][0].source == str(docs / "b.txt") and hits[1][0].source == str(docs / "c.txt")
    three.search("walrus")
    assert len(encoded) == 2  # nothing is kept between searches


def test_update_touches_only_the_shards_whose_files_changed(docs: Path, kw: dict) -> None:
    one = ColbertIndexer("one", **kw)
    three = ColbertIndexer("three", shards=3, **kw)
    one.index([docs]), three.index([docs])
    before = _shard_gens(three)
    top = three.store.current().manifest
    changed = docs / "notes" / "plain.txt"
    shard_of_changed = top.files[str(changed)].shard

    changed.write_text("A walrus and a penguin share an umbrella and a zeppelin.\n", encoding="utf-8")
    r1, r3 = one.index([docs]), three.index([docs])
    assert r3.indexed == r1.indexed == [str(changed)]
    assert sorted(r3.unchanged) == sorted(r1.unchanged)
    assert r3.chunks_written == r1.chunks_written == 1
    after = _shard_gens(three)
    assert after[shard_of_changed] != before[shard_of_changed]
    assert {s: g for s, g in after.items() if s != shard_of_changed} == {
        s: g for s, g in before.items() if s != shard_of_changed
    }
    assert three.store.current().manifest.files[str(changed)].shard == shard_of_changed  # stable assignment
    assert_same_results(one.search_batch(QUERIES, k=10), three.search_batch(QUERIES, k=10))

    # a new file goes to the shard with the fewest chunks; a deleted one leaves its shard
    (docs / "new.txt").write_text("A nebula over the harbour.\n", encoding="utf-8")
    (docs / "atlas.pdf").unlink()
    counts = three.info().shard_chunks
    r1, r3 = one.index([docs]), three.index([docs])
    assert r3.removed == r1.removed == [str(docs / "atlas.pdf")]
    assert r3.indexed == r1.indexed == [str(docs / "new.txt")]
    assert three.store.current().manifest.files[str(docs / "new.txt")].shard == min(counts, key=lambda s: (counts[s], s))
    assert_same_results(one.search_batch(QUERIES, k=10), three.search_batch(QUERIES, k=10))

    r1, r3 = one.delete([docs / "notes"]), three.delete([docs / "notes"])
    assert sorted(r3.removed) == sorted(r1.removed) and r3.chunks_total == r1.chunks_total
    assert_same_results(one.search_batch(QUERIES, k=10), three.search_batch(QUERIES, k=10))

    # metadata only: the shard gets a generation, nothing is encoded
    r3 = three.index([docs / "bestiary.pdf"], metadata={"bestiary.pdf": {"topic": "animals"}})
    assert r3.metadata_updated == [str(docs / "bestiary.pdf")] and r3.chunks_written == 0
    assert r3.chunks_total == r1.chunks_total  # the files not given stay
    hits = three.search("penguin quartz", k=3, where={"topic": "animals"})
    assert hits and {h.source for h in hits} == {str(docs / "bestiary.pdf")}


def test_old_shard_generations_are_pruned(docs: Path, kw: dict) -> None:
    three = ColbertIndexer("three", shards=3, **kw)
    three.index([docs])
    plain = docs / "notes" / "plain.txt"
    for i in range(4):
        plain.write_text(f"A walrus and a penguin, round {i}.\n", encoding="utf-8")
        three.index([docs])
    shard = three.store.current().manifest.files[str(plain)].shard
    kept = sorted(p.name for p in (three.store.path / "shards" / shard / "generations").iterdir())
    assert len(kept) == 2  # the live one, and the one the previous top generation names (readers)
    assert _shard_gens(three)[shard] == kept[-1]


def test_a_failed_shard_leaves_the_previous_generation_intact(
    tmp_path: Path, kw: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, texts = _three_files(tmp_path)
    three = ColbertIndexer("three", shards=3, **kw)
    three.index([docs])
    before_gen, before_shards = three.store.current().path.name, _shard_gens(three)
    before_hits = three.search_batch(QUERIES, k=5)
    top = three.store.current().manifest
    assert len({e.shard for e in top.files.values()}) == 3  # one file per shard
    victim, other = top.files[str(docs / "a.txt")].shard, top.files[str(docs / "b.txt")].shard
    for name in ("a.txt", "b.txt"):  # a change in each of two shards
        (docs / name).write_text(texts[name] + " zeppelin\n", encoding="utf-8")

    from colbert_modal.engine import exact

    real_build = exact.build

    def failing_build(engine, texts, dest, **kwargs):
        if f"/shards/{victim}/" in str(dest):
            raise RuntimeError("CUDA out of memory (injected)")
        return real_build(engine, texts, dest, **kwargs)

    monkeypatch.setattr(exact, "build", failing_build)
    with pytest.raises(ShardBuildError) as info:
        three.index([docs])
    assert set(info.value.failures) == {victim}
    assert victim in str(info.value) and "CUDA out of memory (injected)" in str(info.value)
    assert "unchanged" in str(info.value)
    # nothing published, nothing of the failed update left behind, same hits
    assert three.store.current().path.name == before_gen and _shard_gens(three) == before_shards
    for sid in (victim, other):
        gens = sorted(p.name for p in (three.store.path / "shards" / sid / "generations").iterdir())
        assert gens == [before_shards[sid]]
    assert_same_results(before_hits, ColbertIndexer("three", **kw).search_batch(QUERIES, k=5))

    monkeypatch.setattr(exact, "build", real_build)
    report = three.index([docs])
    assert len(report.indexed) == 2
    assert {s for s, g in _shard_gens(three).items() if g != before_shards[s]} == {victim, other}


def test_shard_count_is_kept_checked_and_rebuilt(docs: Path, kw: dict) -> None:
    ColbertIndexer("ix", shards=3, **kw).index([docs])
    reopened = ColbertIndexer("ix", **kw)
    (docs / "more.txt").write_text("A dolphin and a flamingo.\n", encoding="utf-8")
    assert reopened.index([docs]).indexed == [str(docs / "more.txt")]
    assert reopened.info().shards == 3
    with pytest.raises(SettingsMismatchError, match="shards: index has 3, asked for 2"):
        ColbertIndexer("ix", shards=2, **kw).index([docs])
    two = ColbertIndexer("ix", shards=2, **kw)
    report = two.index([docs], rebuild=True)
    assert two.info().shards == 2 and report.chunks_total == two.info().chunks
    one = ColbertIndexer("ix", shards=1, **kw)
    one.index([docs], rebuild=True)
    assert one.info().shards == 1 and one.store.current().manifest.shards is None  # back to the plain layout
    assert one.search("walrus penguin", k=1)
    ColbertIndexer("plain", **kw).index([docs])
    with pytest.raises(SettingsMismatchError, match="shards: index has 1, asked for 4"):
        ColbertIndexer("plain", shards=4, **kw).index([docs])
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigurationError, match="shards must be an integer"):
            ColbertIndexer("ix", shards=bad, **kw)


def test_rebuild_without_shards_keeps_the_shard_count(docs: Path, kw: dict, inprocess: Path) -> None:
    three = ColbertIndexer("ix", shards=3, **kw)
    three.index([docs])
    again = ColbertIndexer("ix", **kw)
    report = again.index([docs], rebuild=True)  # no shards=: the index's own count, as a reopened index keeps
    assert again.info().shards == 3 and report.chunks_total == again.info().chunks
    remote = ColbertIndexer("rem", mode="remote", **kw)
    remote.index([docs / "notes"])
    ColbertIndexer("rem", mode="remote", shards=2, **kw).index([docs], rebuild=True)
    assert remote.index([docs], rebuild=True).chunks_total > 0
    assert remote.info().shards == 2


def test_without_shards_the_size_decides(docs: Path, kw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    small = ColbertIndexer("small", **kw)
    small.index([docs])
    assert small.info().shards == 1 and small.store.current().manifest.shards is None
    monkeypatch.setattr(sharding, "MAX_CHUNKS_PER_SHARD", 10)
    big = ColbertIndexer("big", **kw)
    report = big.index([docs])
    assert big.info().shards == -(-report.chunks_total // 10)
    assert_same_results(small.search_batch(QUERIES, k=5), big.search_batch(QUERIES, k=5))


def test_more_shards_than_files_leaves_empty_shards_searchable(docs: Path, kw: dict) -> None:
    many = ColbertIndexer("many", shards=12, **kw)
    many.index([docs / "notes"])  # 2 files
    gens = _shard_gens(many)
    assert len(gens) == 12 and sum(g is not None for g in gens.values()) == 2
    hits = many.search("walrus umbrella", k=50)
    assert {Path(h.source).name for h in hits} == {"plain.txt", "meteor.md"}


# --- narrow units -----------------------------------------------------------------------------


def _entry(n: int, shard: str | None = None) -> FileEntry:
    return FileEntry(content_hash="h", document_id="d", chunk_ids=[f"c{i}" for i in range(n)], shard=shard)


def test_assignment_is_sticky_and_balanced() -> None:
    ids = sharding.shard_ids(3)
    plan = UpdatePlan(name="x", settings=Settings("m", 256, 38), base_generation=0,
                      new_files={f"/f{i}": _entry(n) for i, n in enumerate([50, 40, 30, 20, 10, 10])})
    first = sharding.assign(plan, {}, ids)
    load = {s: sum(len(plan.new_files[p].chunk_ids) for p, t in first.items() if t == s) for s in ids}
    assert sorted(load.values()) == [50, 50, 60]  # largest first, each to the lightest shard
    old = {p: _entry(len(e.chunk_ids), first[p]) for p, e in plan.new_files.items()}
    # an update: f0 changed (grew), f5 removed, g new; existing files keep their shards
    plan2 = UpdatePlan(name="x", settings=Settings("m", 256, 38), base_generation=1,
                       new_files={"/f0": _entry(80), "/g": _entry(5)}, remove=["/f5"])
    second = sharding.assign(plan2, old, ids)
    assert {p: second[p] for p in first if p != "/f5"} == {p: s for p, s in first.items() if p != "/f5"}
    assert "/f5" not in second
    lightest = min(ids, key=lambda s: sum(
        len((plan2.new_files.get(p) or old[p]).chunk_ids) for p, t in second.items() if t == s and p != "/g"))
    assert second["/g"] == lightest


def test_merge_results_takes_the_best_k_by_score() -> None:
    def hit(cid: str, score: float, rank: int) -> SearchResult:
        return SearchResult(rank=rank, score=score, text=cid, source="/s", pages=[], chunk_id=cid, document_id="d")

    a = [hit("a1", 9.0, 1), hit("a2", 5.0, 2)]
    b = [hit("b1", 7.0, 1), hit("b2", 6.0, 2), hit("b3", 1.0, 3)]
    merged = sharding.merge_results([a, b, []], 4, "q")
    assert [(r.chunk_id, r.rank) for r in merged] == [("a1", 1), ("b1", 2), ("b2", 3), ("a2", 4)]
    assert merged.query == "q"
    assert a[1].rank == 2  # the shards' results are not changed


# --- through the real Modal bodies ---------------------------------------------------------------


def test_remote_sharded_index_through_the_modal_bodies(docs: Path, kw: dict, inprocess: Path) -> None:
    """Writer.apply -> ShardWriter bodies (in process: .local()), one Searcher per shard, merged."""
    one = ColbertIndexer("one", **kw)
    one.index([docs])
    with ColbertIndexer("rem", mode="remote", shards=3, **kw) as rem:
        report = rem.index([docs])
        assert report.chunks_total == one.info().chunks
        assert rem.info().shards == 3
        assert rem._remote_runner().session.shard_ids("rem") == sharding.shard_ids(3)
        assert_same_results(one.search_batch(QUERIES, k=10), rem.search_batch(QUERIES, k=10))
        where = {"file_name": "bestiary.pdf"}
        assert_same_results(one.search_batch(QUERIES, k=3, where=where), rem.search_batch(QUERIES, k=3, where=where))
        # an update through the remote path, read back at once
        (docs / "notes" / "plain.txt").write_text("A zeppelin over the walrus.\n", encoding="utf-8")
        one.index([docs])
        assert rem.index([docs]).indexed == [str(docs / "notes" / "plain.txt")]
        assert_same_results(one.search_batch(QUERIES, k=10), rem.search_batch(QUERIES, k=10))
    # on the "Volume": one top generation naming three shard generations
    top = json.loads((inprocess / "rem" / "generations" / (inprocess / "rem" / "CURRENT").read_text().strip()
                      / "manifest.json").read_text())
    assert sorted(top["shards"]) == sharding.shard_ids(3)


def test_pull_and_push_copy_every_shard(docs: Path, kw: dict, inprocess: Path, tmp_path: Path) -> None:
    one = ColbertIndexer("one", **kw)
    one.index([docs])
    local = ColbertIndexer("sh", shards=3, **kw)
    local.index([docs])
    local.mode = "remote"
    local.push()  # local -> "Volume"
    assert not (inprocess / "sh" / "uploads").exists()
    assert local.info.remote().shards == 3
    assert_same_results(one.search_batch(QUERIES, k=10), local.search_batch(QUERIES, k=10))
    local.push()  # again: the next generation, its shards placed next to the first ones
    assert local.info.remote().generation == 2
    local.close()

    elsewhere = ColbertIndexer("sh", mode="remote", index_root=tmp_path / "elsewhere", progress=False)
    elsewhere.pull()  # "Volume" -> another local root
    pulled = elsewhere.info.local()
    assert pulled.shards == 3 and pulled.chunks == one.info().chunks
    assert_same_results(one.search_batch(QUERIES, k=10), elsewhere.search_batch.local(QUERIES, k=10))
    elsewhere.pull()  # over an existing sharded copy
    assert_same_results(one.search_batch(QUERIES, k=10), elsewhere.search_batch.local(QUERIES, k=10))
    for sid in sharding.shard_ids(3):  # the older pulled generation is kept for readers, no more
        assert len(list((tmp_path / "elsewhere" / "sh" / "shards" / sid / "generations").iterdir())) <= 2
    elsewhere.close()


def test_a_shard_searcher_follows_new_generations_and_keeps_its_unchanged_shard_loaded(
    tmp_path: Path, kw: dict
) -> None:
    """IndexServer(shard=...) as a Searcher container runs it: one shard, reloaded only when it changed."""
    from colbert_modal.remote.server import IndexServer

    docs, texts = _three_files(tmp_path)
    three = ColbertIndexer("three", shards=3, **kw)
    three.index([docs])
    files = three.store.current().manifest.files
    mine, other = files[str(docs / "a.txt")].shard, files[str(docs / "b.txt")].shard
    servers = {sid: IndexServer(three.index_root, "three", shard=sid, min_refresh_interval=0)
               for sid in sharding.shard_ids(3)}
    try:
        generation, results = servers[mine].search(["aardvark bicycle"], k=5)
        assert generation == 1 and {r.source for r in results[0]} == {str(docs / "a.txt")}
        loaded = servers[mine].loaded.opened
        (docs / "b.txt").write_text("penguin quartz walrus zeppelin\n", encoding="utf-8")  # another shard changes
        three.index([docs])
        generation, _ = servers[mine].search(["aardvark bicycle"], k=5)
        assert generation == 2 and servers[mine].loaded.opened is loaded  # its shard did not change: kept
        generation, results = servers[other].search(["zeppelin"], k=5)
        assert generation == 2 and results[0][0].source == str(docs / "b.txt")
        merged = sharding.merge_results([s.search(["walrus zeppelin"], k=3)[1][0] for s in servers.values()], 3)
        assert_same_results([three.search("walrus zeppelin", k=3)], [merged])
        copies = sorted(p.relative_to(servers[other]._cache).as_posix()
                        for p in servers[other]._cache.glob("shards/*/generations/g*"))
        assert copies == [f"shards/{other}/generations/{_shard_gens(three)[other]}"]  # the old copy is gone
    finally:
        for server in servers.values():
            server.close()
