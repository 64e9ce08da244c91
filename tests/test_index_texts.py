"""``ColbertIndexer.index_texts``: texts from memory as the "files" of an index (tiny checkpoint, tiny corpora)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from colbert_modal import ColbertIndexer, ConfigurationError, Document, Page, TextRecord
from colbert_modal.cli import cli
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixtures)
from test_standin_remote import HUB_ID, _remote, _volume, hub_model, standin  # noqa: F401 (fixtures)

RECORDS = [
    {"id": "zoo-1", "text": "penguin quartz rhubarb saffron tornado", "metadata": {"team": "north", "year": 2023}},
    {"id": "zoo-2", "text": "umbrella volcano walrus xylophone yodel zeppelin", "metadata": {"team": "south"}},
    {"id": "sky-1", "text": "meteor nebula lantern origami kangaroo", "metadata": {"team": "north", "year": 2024}},
]


def _indexer(root: Path, checkpoint: Path, name: str = "texts", **kwargs: Any) -> ColbertIndexer:
    return ColbertIndexer(name, model=str(checkpoint), index_root=root, progress=False, **kwargs)


def _generation(idx: ColbertIndexer) -> int:
    return idx.info().generation


def test_add_change_metadata_only_and_delete_by_id(colbert_checkpoint: Path, tmp_path: Path) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint)
    report = idx.index_texts(RECORDS)
    assert sorted(report.indexed) == ["sky-1", "zoo-1", "zoo-2"]  # reports name records by their ids
    assert report.chunks_written == 3 and report.documents_total == 3
    hit = idx.search("walrus xylophone", k=1)[0]
    assert (hit.source, hit.pages, hit.page) == ("zoo-2", [], None)  # the id where a file's hit has its path
    assert hit.metadata == {"team": "south"} and "walrus" in hit.text
    with pytest.raises(ConfigurationError, match=r"no page to show: it comes from text record 'zoo-2'"):
        hit.page_image()
    assert sorted(idx.info().sources) == ["sky-1", "zoo-1", "zoo-2"]
    assert "zoo-2" in hit._repr_html_() and "file:" not in hit._repr_html_()  # no link to a file that is not one

    again = idx.index_texts(RECORDS)  # unchanged: nothing encoded, no new generation
    assert again.chunks_written == 0 and sorted(again.unchanged) == ["sky-1", "zoo-1", "zoo-2"] and not again.changed
    assert _generation(idx) == 1

    changed = [dict(RECORDS[0], text="flamingo glacier harbour igloo jasmine"), *RECORDS[1:]]
    report = idx.index_texts(changed)  # a changed text is re-encoded, alone
    assert report.indexed == ["zoo-1"] and report.chunks_written == 1 and report.chunks_total == 3
    assert idx.search("flamingo glacier", k=1)[0].source == "zoo-1"
    assert all("penguin" not in h.text for h in idx.search("penguin quartz rhubarb", k=3))  # the old text is gone

    meta = [changed[0], dict(RECORDS[1], metadata={"team": "east"}), RECORDS[2]]
    report = idx.index_texts(meta)  # metadata alone: a new generation, nothing encoded
    assert report.metadata_updated == ["zoo-2"] and report.chunks_written == 0 and report.indexed == []
    assert [h.source for h in idx.search("walrus", k=3, where={"team": "east"})] == ["zoo-2"]
    assert idx.search("walrus", k=3, where={"team": "south"}) == []

    report = idx.index_texts([RECORDS[2]])  # records not given are kept
    assert report.chunks_total == 3 and not report.changed
    report = idx.delete_texts(["zoo-1", "nope"])
    assert report.removed == ["zoo-1"] and [s.path for s in report.skipped] == ["nope"]
    assert sorted(idx.info().sources) == ["sky-1", "zoo-2"]
    assert all(h.source != "zoo-1" for h in idx.search("flamingo glacier", k=5))
    assert idx.delete_texts("zoo-2").removed == ["zoo-2"]  # one id as a string
    assert idx.info().sources == ["sky-1"]


def test_plain_strings_get_content_ids_that_delete_them(colbert_checkpoint: Path, tmp_path: Path) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint)
    texts = ["penguin quartz rhubarb", "meteor nebula lantern"]
    ids = [TextRecord.from_text(t).id for t in texts]
    assert ids[0] == hashlib.sha256(texts[0].encode("utf-8")).hexdigest()[:16] and ids[0] != ids[1]
    report = idx.index_texts(texts)
    assert sorted(report.indexed) == sorted(ids)
    hit = idx.search("meteor nebula", k=1)[0]
    assert hit.source == ids[1] and hit.metadata == {}
    assert idx.index_texts(iter(texts)).chunks_written == 0  # any iterable; the same strings, the same ids
    assert idx.delete_texts([ids[1]]).removed == [ids[1]]
    assert idx.info().sources == [ids[0]]


def test_records_and_files_share_an_index(colbert_checkpoint: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    note = docs / "note.txt"
    note.write_text("A walrus and a penguin share an umbrella.\n", encoding="utf-8")
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    idx.index(docs)
    # a record whose id is the file's own path, and a Document-like object (.id, .text, .metadata)
    doc = Document(id="doc-a", source="/elsewhere/x.txt", content_hash="0" * 64,
                   pages=[Page(number=1, text="flamingo glacier harbour")], metadata={"kind": "loaded"})
    report = idx.index_texts([{"id": str(note), "text": "meteor nebula lantern origami"}, doc])
    assert sorted(report.indexed) == sorted([str(note), "doc-a"])
    assert report.documents_total == 3 and report.chunks_written == 2
    info = idx.info()
    assert info.documents == 3 and sorted(info.sources) == sorted([str(note), str(note), "doc-a"])

    by_file = idx.search("walrus penguin umbrella", k=1)[0]
    by_record = idx.search("meteor nebula lantern", k=1)[0]
    assert by_file.source == by_record.source == str(note) and by_file.pages == [1] and by_record.pages == []
    assert [h.source for h in idx.search("flamingo", k=1, where={"source": "doc-a"})] == ["doc-a"]
    assert [h.source for h in idx.search("flamingo", k=5, where={"kind": "loaded"})] == ["doc-a"]

    assert idx.index(docs).chunks_written == 0  # files re-indexed: the records stay (they are no missing files)
    assert idx.info().chunks == 3
    idx.delete([note])  # deleting the file leaves the record of the same name
    assert [h.pages for h in idx.search("meteor walrus", k=5)] == [[], []]
    assert idx.delete_texts([str(note)]).removed == [str(note)]
    assert idx.info().sources == ["doc-a"]


BAD = [
    pytest.param([{"text": "penguin"}], r"record #0: no 'id'", id="no-id"),
    pytest.param([{"id": "g", "text": "walrus"}, {"id": "", "text": "penguin"}], r"record #1: empty id",
                 id="empty-id"),
    pytest.param([{"id": 7, "text": "penguin"}], r"record #0: id must be a string, got int", id="int-id"),
    pytest.param([{"id": "a", "text": "penguin"}, {"id": "b", "text": "walrus"}, {"id": "a", "text": "x"}],
                 r"record #2 \(id 'a'\): duplicate id, already given by record #0", id="duplicate-id"),
    pytest.param(["penguin", "penguin"], r"record #1 .*duplicate id.*equal plain strings", id="duplicate-strings"),
    pytest.param([{"id": "a", "text": b"penguin"}], r"record #0 \(id 'a'\): text must be a string, got bytes",
                 id="bytes-text"),
    pytest.param([{"id": "a", "text": None}], r"record #0 \(id 'a'\): text must be a string", id="none-text"),
    pytest.param(["walrus", 3], r"record #1: must be a string, a TextRecord or a dict", id="not-a-record"),
    pytest.param([{"id": "a", "text": "  "}], r"record #0 \(id 'a'\): empty text", id="empty-text"),
    pytest.param([{"id": "a", "text": "x", "metadata": {"when": object()}}], r"record #0 \(id 'a'\).*'when'",
                 id="metadata-not-json"),
    pytest.param([{"id": "a", "text": "x", "metadata": {"nested": {"b": 1}}}], r"record #0 \(id 'a'\).*'nested'",
                 id="metadata-nested"),
    pytest.param([{"id": "a", "text": "x", "metadata": ["y"]}], r"record #0 \(id 'a'\).*must be a dict",
                 id="metadata-not-dict"),
    pytest.param([{"id": "a", "text": "x", "metadata": {"source": "y"}}], r"record #0 \(id 'a'\).*'source'",
                 id="metadata-builtin-key"),
    pytest.param([{"id": "a", "text": "x", "meta": {}}], r"record #0: unknown key 'meta'", id="unknown-key"),
    pytest.param([{"id": "a", "text": "bad \ud800"}], r"record #0 \(id 'a'\).*not valid Unicode", id="surrogate"),
    pytest.param("one text", r"a list .* not one", id="a-bare-string"),
]


@pytest.mark.parametrize(("records", "message"), BAD)
def test_bad_records_fail_before_any_work(colbert_checkpoint: Path, tmp_path: Path, records: Any,
                                          message: str) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint)
    with pytest.raises(ConfigurationError, match=message):
        idx.index_texts(records)
    assert not idx.store.exists()  # nothing indexed, not even the good records before the bad one
    idx.index_texts([{"id": "ok-1", "text": "meteor nebula lantern"}])
    with pytest.raises(ConfigurationError, match=message):
        idx.index_texts(records)
    assert _generation(idx) == 1 and idx.info().sources == ["ok-1"]


def test_filters_on_record_metadata(colbert_checkpoint: Path, tmp_path: Path) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint)
    idx.index_texts(RECORDS)
    assert sorted(h.source for h in idx.search("kangaroo penguin", k=5, where={"team": "north"})) == ["sky-1", "zoo-1"]
    assert [h.source for h in idx.search("kangaroo penguin", k=5, where={"year": {"$gte": 2024}})] == ["sky-1"]
    assert [h.source for h in idx.search("walrus", k=5, where={"source": {"$glob": "zoo-*"}, "team": "south"})] \
        == ["zoo-2"]
    assert idx.search("walrus", k=5, where={"page": 1}) == []  # records have no pages


def test_sharded_records_match_the_unsharded_index(colbert_checkpoint: Path, tmp_path: Path) -> None:
    records = [*RECORDS, {"id": "sea-1", "text": "dolphin harbour walrus penguin", "metadata": {"team": "west"}}]
    flat = _indexer(tmp_path / "flat", colbert_checkpoint, backend="exact")
    sharded = _indexer(tmp_path / "sharded", colbert_checkpoint, backend="exact", shards=2)
    flat.index_texts(records)
    sharded.index_texts(records)
    info = sharded.info()
    assert info.shards == 2 and sum(info.shard_chunks.values()) == 4 and all(info.shard_chunks.values())
    for query in ("walrus penguin", "meteor nebula", "umbrella"):
        assert [(h.source, h.chunk_id, round(h.score, 4)) for h in sharded.search(query, k=4)] == \
            [(h.source, h.chunk_id, round(h.score, 4)) for h in flat.search(query, k=4)]
    report = sharded.index_texts([dict(records[3], text="glacier igloo jasmine")])
    assert report.indexed == ["sea-1"] and report.chunks_written == 1
    assert sharded.search("glacier igloo", k=1)[0].source == "sea-1"
    assert sharded.delete_texts(["sea-1"]).removed == ["sea-1"]
    assert sorted(sharded.info().sources) == ["sky-1", "zoo-1", "zoo-2"] and sharded.info().shards == 2


def test_async_index_texts_and_delete_texts(colbert_checkpoint: Path, tmp_path: Path) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint)

    async def main() -> tuple[Any, Any, Any]:
        added = await idx.index_texts.aio(RECORDS)
        hits = await idx.search.aio("walrus xylophone", k=1)
        removed = await idx.delete_texts.aio(["zoo-2"])
        return added, hits, removed

    added, hits, removed = asyncio.run(main())
    assert added.chunks_written == 3 and hits[0].source == "zoo-2" and removed.removed == ["zoo-2"]


def test_remote_records_through_the_standin(standin: StandIn, tmp_path: Path) -> None:  # noqa: F811
    with _remote(tmp_path, "texts", model=HUB_ID) as idx:
        report = idx.index_texts(RECORDS)
        assert sorted(report.indexed) == ["sky-1", "zoo-1", "zoo-2"] and report.chunks_written == 3
        assert (_volume(standin) / "texts" / "CURRENT").read_text().strip() == "g000001"
        hit = idx.search("walrus xylophone", k=1)[0]
        assert (hit.source, hit.pages) == ("zoo-2", [])
        assert [h.source for h in idx.search("kangaroo", k=3, where={"year": 2024})] == ["sky-1"]
        assert idx.index_texts(RECORDS).chunks_written == 0  # planned here against the Volume's manifest
        moved = idx.index_texts([dict(RECORDS[1], metadata={"team": "east"})])
        assert moved.metadata_updated == ["zoo-2"] and moved.chunks_written == 0
        with pytest.raises(ConfigurationError, match="duplicate id"):
            idx.index_texts([RECORDS[0], RECORDS[0]])
        assert idx.delete_texts(["zoo-1"]).removed == ["zoo-1"]
        assert sorted(idx.info().sources) == ["sky-1", "zoo-2"]
    assert [c.tag for c in standin.calls].count("Writer.apply") >= 3


def _cli(args: list[Any], code: int = 0, **kwargs: Any) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args], **kwargs)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


def test_cli_index_texts_from_a_file_and_stdin(colbert_checkpoint: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n\n", encoding="utf-8")
    base = ["--name", "cli", "--index-root", tmp_path / "root"]
    out = _cli(["index-texts", jsonl, *base, "--model", colbert_checkpoint]).stdout
    assert out.startswith("Indexed 2 records into 'cli'") and "Chunks: 2 written, 2 in the index." in out
    stdin = json.dumps(RECORDS[2]) + "\n" + json.dumps("glacier igloo jasmine") + "\n"
    report = json.loads(_cli(["index-texts", "-", *base, "--json"], input=stdin).stdout)
    assert sorted(report["indexed"]) == sorted(["sky-1", TextRecord.from_text("glacier igloo jasmine").id])
    hits = json.loads(_cli(["search", "meteor nebula", *base, "--json", "-k", "1"]).stdout)
    assert hits[0]["source"] == "sky-1"

    bad = _cli(["index-texts", "-", *base], code=2, input=json.dumps({"id": "x"}) + "\n")
    assert "record #0: no 'text'" in bad.stderr and bad.stdout == ""
    bad = _cli(["index-texts", "-", *base], code=2, input='{"id": "x", "text": "a"}\n{oops\n')
    assert "<stdin>, line 2: not JSON" in bad.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    _cli(["index-texts", empty, "--name", "new", "--index-root", tmp_path / "root", "--model", colbert_checkpoint],
         code=4)  # nothing to index into a new index: NoDocumentsError, as `index`
    assert json.loads(_cli(["info", "cli", "--index-root", tmp_path / "root", "--json"]).stdout)["documents"] == 4

    opened = _cli(["search", "meteor nebula", *base, "-k", "1", "--open"], code=2)  # a record is no file to open
    assert "text record 'sky-1'" in opened.stderr
    out = _cli(["delete", "cli", "--text-id", "sky-1", "--text-id", "nope", "--index-root", tmp_path / "root"]).stdout
    assert "Removed 1 record from 'cli'" in out and "Not in the index: nope" in out
    assert json.loads(_cli(["info", "cli", "--index-root", tmp_path / "root", "--json"]).stdout)["documents"] == 3
    _cli(["delete", "cli", "x.pdf", "--text-id", "a", "--index-root", tmp_path / "root"], code=2)


def test_a_record_over_max_chunks_is_skipped_and_its_old_version_kept(colbert_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    idx = _indexer(tmp_path, colbert_checkpoint, max_tokens=16, overlap=0)
    idx.index_texts([{"id": "long", "text": "penguin walrus"}, RECORDS[2]])
    long_text = " ".join(["penguin walrus umbrella volcano"] * 20)
    report = idx.index_texts([{"id": "long", "text": long_text}], max_chunks_per_file=2)
    assert [(s.path, s.error) for s in report.skipped] == [("long", "TooManyChunks")]
    assert [w.path for w in report.warnings] == ["long"] and report.chunks_written == 0
    assert idx.search("penguin walrus", k=1)[0].text == "penguin walrus"  # the indexed version stays
    assert idx.index_texts([{"id": "long", "text": long_text}]).chunks_written > 2
    with pytest.raises(ConfigurationError, match="max_chunks_per_file"):
        idx.index_texts(["x"], max_chunks_per_file=0)


def test_records_are_found_by_keyword_and_hybrid_search(colbert_checkpoint: Path, tmp_path: Path) -> None:
    """The keyword index of a generation holds records too, and their hits carry the record's id."""
    idx = _indexer(tmp_path, colbert_checkpoint)
    idx.index_texts([*RECORDS, {"id": "part", "text": "replace part PN/4471-B before flight", "metadata": {}}])
    for mode in ("keyword", "hybrid"):
        hits = idx.search("PN/4471-B", k=2, mode=mode)
        assert hits[0].source == "part" and hits[0].pages == [], mode
        assert [h.source for h in idx.search("meteor", k=3, mode=mode, where={"team": "north"})][0] == "sky-1"
    idx.delete_texts(["part"])
    assert all(h.source != "part" for h in idx.search("PN/4471-B", k=4, mode="keyword"))


def test_other_settings_on_an_existing_index_say_what_index_texts_can_do(colbert_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    from colbert_modal import SettingsMismatchError

    _indexer(tmp_path, colbert_checkpoint).index_texts(RECORDS[:1])
    other = _indexer(tmp_path, colbert_checkpoint, max_tokens=64)
    with pytest.raises(SettingsMismatchError, match=r"max_tokens.*index_texts adds to the index as it is built") as err:
        other.index_texts(RECORDS[1:2])
    assert "Pass rebuild=True" not in str(err.value)  # index_texts takes no rebuild=
