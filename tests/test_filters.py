"""Search within a subset: per-file metadata, ``where`` filters, both backends, CLI and remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.errors import ConfigurationError
from colbert_modal.filters import ChunkColumns, check_metadata, parse_where
from colbert_modal.loaders import LOADER_KEYS, load_file
from colbert_modal.records import Chunk
from colbert_modal.pipeline import resolve_metadata

ROOT = Path(__file__).resolve().parent.parent


# --- the filter language, over hand-made chunks ------------------------------------


def _chunk(i: int, source: str, pages: list[int], **meta: object) -> Chunk:
    return Chunk(id=f"d-{i}", document_id="d", source=source, position=i, pages=pages, text=f"t{i}", n_tokens=1,
                 metadata=meta)


@pytest.fixture
def columns() -> ChunkColumns:
    chunks = [
        _chunk(0, "/data/reports/a.pdf", [1], year=2023, lang="en", tags=["x", "y"], draft=False),
        _chunk(1, "/data/reports/a.pdf", [1, 2], year=2023, lang="en", tags=["x", "y"], draft=False),
        _chunk(2, "/data/reports/b.pdf", [10], year=2021, lang="de", tags=["y"], draft=True),
        _chunk(3, "/data/notes/c.md", [1], year=2022.5, lang=None),
        _chunk(4, "/data/notes/d.txt", [40, 41]),
        _chunk(5, "/data/reports/a.pdf", [3], year=2023, lang="en", tags=["x", "y"], draft=False),
    ]
    return ChunkColumns(chunks)


def _sel(columns: ChunkColumns, where: dict) -> list[int]:
    return columns.select(parse_where(where)).tolist()


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"year": 2023}, [0, 1, 5]),
        ({"year": {"$eq": 2021}}, [2]),
        ({"year": {"$ne": 2023}}, [2, 3]),  # chunk 4 has no year: no condition holds there
        ({"year": {"$gt": 2022}}, [0, 1, 3, 5]),
        ({"year": {"$gte": 2022.5}}, [0, 1, 3, 5]),
        ({"year": {"$lt": 2022.5}}, [2]),
        ({"year": {"$lte": 2022.5}}, [2, 3]),
        ({"year": [2021, 2022.5]}, [2, 3]),
        ({"year": {"$in": [2021]}}, [2]),
        ({"year": {"$nin": [2021, 2023]}}, [3]),
        ({"year": {"$gte": 2022, "$lt": 2023}}, [3]),  # several operators: all hold
        ({"lang": "en", "year": 2023}, [0, 1, 5]),
        ({"lang": None}, [3]),
        ({"lang": {"$glob": "e*"}}, [0, 1, 5]),
        ({"tags": "x"}, [0, 1, 5]),  # a list-valued field: any element
        ({"tags": {"$ne": "x"}}, [2]),  # ... and $ne: no element equals
        ({"tags": {"$nin": ["x", "z"]}}, [2]),
        ({"draft": True}, [2]),
        ({"draft": False}, [0, 1, 5]),
        ({"year": 2023, "draft": True}, []),
        ({"nobody": 1}, []),  # a field no chunk has: empty, not an error
        ({"nobody": {"$ne": 1}}, []),
    ],
)
def test_user_fields_every_operator(columns: ChunkColumns, where: dict, expected: list[int]) -> None:
    assert _sel(columns, where) == expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"page": 1}, [0, 1, 3]),
        ({"page": 2}, [1]),  # holds when any of the chunk's pages does
        ({"page": {"$gte": 10, "$lte": 40}}, [2, 4]),
        ({"page": {"$gt": 40}}, [4]),
        ({"page": {"$lt": 2}}, [0, 1, 3]),
        ({"page": [3, 41]}, [4, 5]),
        ({"page": {"$nin": [1]}}, [1, 2, 4, 5]),
        ({"page": {"$ne": 1}}, [1, 2, 4, 5]),
        ({"source": "/data/notes/c.md"}, [3]),
        ({"source": {"$glob": "reports/*.pdf"}}, [0, 1, 2, 5]),  # the tail of the path
        ({"source": {"$glob": "*.md"}}, [3]),
        ({"source": {"$glob": "/data/notes/*"}}, [3, 4]),  # the whole path
        ({"source": {"$glob": "/notes/*"}}, []),  # absolute: the whole path only
        ({"source": {"$ne": "/data/reports/a.pdf"}}, [2, 3, 4]),
        ({"source": {"$glob": "reports/*.pdf"}, "page": {"$gte": 2}}, [1, 2, 5]),
    ],
)
def test_builtin_fields_page_and_source(columns: ChunkColumns, where: dict, expected: list[int]) -> None:
    assert _sel(columns, where) == expected


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ("year=2023", "dict of conditions"),
        ({"year": {"$regex": "x"}}, "unknown operator '\\$regex'"),
        ({"$or": [{"year": 1}]}, "not a field name"),
        ({"year": {}}, "empty operator dict"),
        ({"year": {"$in": 2023}}, "list"),
        ({"year": {"$in": [[1]]}}, "list"),
        ({"year": [{"a": 1}]}, "list"),
        ({"year": {"$eq": {"a": 1}}}, "string, number"),
        ({"year": {"$gt": None}}, "compares numbers or strings"),
        ({"year": {"$gt": True}}, "compares numbers or strings"),
        ({"year": {"$glob": 3}}, "shell pattern"),
        ({"year": float("nan")}, "string, number"),
        ({"page": "3"}, "'page' holds whole page numbers"),
        ({"page": 2.5}, "'page' holds whole page numbers"),
        ({"page": {"$glob": "1*"}}, "'page' holds"),
        ({"source": 3}, "'source' holds absolute paths"),
    ],
)
def test_bad_where_values(where: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_where(where)  # type: ignore[arg-type]
    assert issubclass(ConfigurationError, ValueError)


@pytest.mark.parametrize(
    "where", [{"year": "2023"}, {"year": {"$gt": "2020"}}, {"lang": 3}, {"lang": {"$in": ["en", 1]}}, {"year": {"$glob": "2*"}}]
)
def test_type_mismatch_is_an_error(columns: ChunkColumns, where: dict) -> None:
    with pytest.raises(ConfigurationError, match="type mismatch|holds none"):
        columns.select(parse_where(where))


def test_columns_are_compact(columns: ChunkColumns) -> None:
    chunks = [_chunk(i, f"/d/{i // 50}.pdf", [i % 7 + 1], year=2000 + i // 50) for i in range(5000)]
    cols = ChunkColumns(chunks)
    assert len(cols.sources) == 100  # one combination per file
    assert cols.nbytes / len(cols) < 20
    assert cols.select(parse_where({"year": 2003, "page": 1})).tolist() == [
        i for i in range(150, 200) if i % 7 == 0
    ]


# --- hostile where values and metadata: short ConfigurationErrors, no raw errors, no quadratic cost ---


def _deep(levels: int) -> list:
    top: list = []
    inner = top
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return top


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"page": {"$in": [10**30]}}, []),
        ({"page": {"$in": [10**30, 10]}}, [2]),
        ({"page": {"$nin": [10**30]}}, [0, 1, 2, 3, 4, 5]),
        ({"page": {"$in": [1e20, -(10**30)]}}, []),
        ({"page": {"$lt": 10**30}}, [0, 1, 2, 3, 4, 5]),
        ({"page": {"$gt": -(10**30)}}, [0, 1, 2, 3, 4, 5]),
        ({"page": {"$gte": 10**30}}, []),
        ({"page": 10**30}, []),
    ],
)
def test_page_numbers_beyond_any_page_match_nothing(columns: ChunkColumns, where: dict, expected: list[int]) -> None:
    assert _sel(columns, where) == expected  # was OverflowError for $in


@pytest.mark.parametrize(
    "where",
    [
        {"year": _deep(100_000)},  # was RecursionError (the message's repr)
        {"year": {"$eq": _deep(100_000)}},
        {"year": {"$in": [1, _deep(100_000)]}},
        {"year": [*range(5_000_000), {"a": 1}]},  # was a 15 MB message
        {"year": {"$in": [*range(5_000_000), [1]]}},
        {"y" * 1_000_000: {"$eq": [1]}},
        {"year": {"$" + "x" * 1_000_000: 1}},
        [*range(5_000_000)],
    ],
    ids=["deep", "deep-eq", "deep-in", "long-list", "long-in", "long-field", "long-operator", "not-a-dict"],
)
def test_hostile_where_values_are_short_configuration_errors(where: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_where(where)  # type: ignore[arg-type]
    assert len(str(info.value)) < 300, str(info.value)[:1000]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"year": _deep(100_000)}, "must be a string"),
        ({"year": [*range(5_000_000), [1]]}, "must be a string"),
        ({"x" * 1_000_000: {}}, "must be a string"),
        ({"label": "caf\ud800"}, "not valid Unicode"),  # was a pydantic error at publish, after encoding
        ({"tags": ["ok", "\udfff"]}, "not valid Unicode"),
        ({"ti\ud800tle": "x"}, "not valid Unicode"),
    ],
)
def test_hostile_metadata_is_a_short_configuration_error(meta: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        check_metadata(meta, "a.pdf", LOADER_KEYS)
    assert str(info.value).startswith("metadata for a.pdf") and len(str(info.value)) < 300


def test_in_and_nin_cost_one_lookup_per_value() -> None:
    """10k values over 2,000 files: a set lookup per file, not a scan of the list (was ~20M comparisons)."""
    import time

    cols = ChunkColumns([_chunk(i, f"/d/{i}.pdf", [1], code=f"c{i}", n=i, flag=i % 2 == 0) for i in range(2000)])
    codes = [f"c{i}" for i in range(0, 20_000, 2)]
    t0 = time.perf_counter()
    hits = cols.select(parse_where({"code": {"$in": codes}}))
    misses = cols.select(parse_where({"code": {"$nin": codes}}))
    assert time.perf_counter() - t0 < 1.5
    assert hits.tolist() == list(range(0, 2000, 2)) and misses.tolist() == list(range(1, 2000, 2))
    # kinds stay apart in the set: True is not 1, 2.0 is 2
    assert _sel(cols, {"n": {"$in": [1.0, 2]}}) == [1, 2]
    assert _sel(cols, {"flag": {"$in": [True]}}) == list(range(0, 2000, 2))
    with pytest.raises(ConfigurationError, match="type mismatch"):
        _sel(cols, {"flag": {"$in": [1]}})


# --- metadata at index time ----------------------------------------------------------


def test_loader_keys_cover_what_loaders_set(tmp_path: Path) -> None:
    from helpers import make_text_pdf

    pdf = make_text_pdf(tmp_path / "a.pdf", ["hello world"])
    txt = tmp_path / "b.txt"
    txt.write_text("hello\n", encoding="utf-8")
    for path in (pdf, txt):
        assert set(load_file(path).metadata) <= LOADER_KEYS
    assert {"file_name", "page_count", "type", "encoding", "sections"} <= LOADER_KEYS


@pytest.mark.parametrize("key", ["file_name", "page_count", "type", "encoding", "sections", "title", "source", "page"])
def test_colliding_key_is_refused_naming_it(key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"key '{key}' is a built-in field"):
        check_metadata({key: 1}, "a.pdf", LOADER_KEYS)


@pytest.mark.parametrize("meta", [{"year": {"a": 1}}, {"year": [[1]]}, {1: "x"}, ["year"], {"x": float("inf")}])
def test_bad_metadata_values(meta: object) -> None:
    with pytest.raises(ConfigurationError, match="metadata for"):
        check_metadata(meta, "a.pdf", LOADER_KEYS)


def test_resolve_metadata_by_path_name_glob_and_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "reports" / "r1.pdf"
    monkeypatch.chdir(tmp_path)
    spec = {"reports/*.pdf": {"kind": "report", "year": 1}, "r1.pdf": {"year": 2023}, "other.pdf": {"x": 1}}
    assert resolve_metadata(spec, f) == {"kind": "report", "year": 2023}  # later keys win
    assert resolve_metadata({"reports/r1.pdf": {"a": 1}}, f) == {"a": 1}  # relative to the working directory
    assert resolve_metadata({str(f): {"a": (1, 2)}}, f) == {"a": [1, 2]}
    assert resolve_metadata({"nothing*.pdf": {"a": 1}}, f) is None  # says nothing: the file keeps its metadata
    assert resolve_metadata(lambda p: {"stem": p.stem}, f) == {"stem": "r1"}
    assert resolve_metadata(None, f) is None
    with pytest.raises(ConfigurationError, match="metadata callable failed"):
        resolve_metadata(lambda p: 1 / 0, f)
    with pytest.raises(ConfigurationError, match="must be a dict"):
        resolve_metadata(lambda p: None, f)


def test_manifest_metadata_round_trip_and_old_format() -> None:
    from colbert_modal.store import FileEntry, Manifest

    m = Manifest(name="m", model="x", max_tokens=8, overlap=0, backend="exact")
    m.files["/a.pdf"] = FileEntry("h", "d", ["d-0"], metadata={"year": 2023})
    m.files["/b.pdf"] = FileEntry("h2", "d2", ["d2-0"])
    data = json.loads(json.dumps(m.to_json()))
    assert data["files"]["/a.pdf"]["metadata"] == {"year": 2023}
    assert "metadata" not in data["files"]["/b.pdf"]  # a release without metadata still reads it
    again = Manifest.from_json(data)
    assert again.files["/a.pdf"].metadata == {"year": 2023} and again.files["/b.pdf"].metadata == {}
    assert again.metadata_keys() == {"year": 1}


# --- end to end, exact backend --------------------------------------------------------------


@pytest.fixture
def docs(tmp_path: Path, corpus_dir: Path) -> Path:
    dest = tmp_path / "docs"
    shutil.copytree(corpus_dir, dest)
    return dest


META = {"atlas.pdf": {"year": 2023, "tags": ["geo"]}, "*.md": {"year": 2021}, "notes/*": {"kind": "note"}}


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from colbert_modal.engine.encoder import Encoder

    calls: list[int] = []
    original = Encoder.encode_documents

    def counting(self, texts, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode_documents", counting)
    return calls


@pytest.mark.slow
def test_exact_metadata_filters_and_metadata_only_update(
    colbert_checkpoint: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = ColbertIndexer("meta", model=colbert_checkpoint, index_root=tmp_path / "root", progress=False)
    idx.index([docs], metadata=META)
    atlas, bestiary, meteor = str(docs / "atlas.pdf"), str(docs / "bestiary.pdf"), str(docs / "notes" / "meteor.md")
    manifest = idx.store.current().manifest
    assert manifest.files[atlas].metadata == {"year": 2023, "tags": ["geo"]}
    assert manifest.files[meteor].metadata == {"year": 2021, "kind": "note"}
    assert manifest.files[bestiary].metadata == {}
    assert idx.info().metadata_keys == {"kind": 2, "tags": 1, "year": 2}

    hits = idx.search("penguin quartz rhubarb", k=10, where={"year": 2023})
    assert len(hits) == 3 and {h.source for h in hits} == {atlas}  # all of atlas's chunks, never a bestiary one
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].metadata["year"] == 2023 and hits[0].metadata["type"] == "pdf"  # user's and loaders' keys
    assert [h.source for h in idx.search("walrus", k=5, where={"kind": "note", "type": "text"})] == [
        str(docs / "notes" / "plain.txt")
    ]
    one = idx.search("aardvark", k=10, where={"source": {"$glob": "docs/atlas.pdf"}, "page": {"$gte": 2}})
    assert sorted(h.pages[0] for h in one) == [2, 3]
    assert idx.search("aardvark", k=10, where={"year": 1999}) == []
    assert idx.search("aardvark", k=10, where={"no_such_field": "x"}) == []
    batch = idx.search_batch(["aardvark", "walrus"], k=2, where={"year": [2021, 2023]})
    assert all(h.metadata["year"] in (2021, 2023) for q in batch for h in q) and [len(q) for q in batch] == [2, 2]
    for bad in ({"year": {"$like": 1}}, {"year": "2023"}):
        with pytest.raises(ConfigurationError):
            idx.search("aardvark", where=bad)

    # exact backend: the result equals exact MaxSim over the matching chunks
    full = idx.search("glacier harbour meteor", k=100)
    ref = [h for h in full if h.metadata.get("year") == 2023][:2]
    got = idx.search("glacier harbour meteor", k=2, where={"year": 2023})
    assert [(h.chunk_id, round(h.score, 4)) for h in got] == [(h.chunk_id, round(h.score, 4)) for h in ref]

    # metadata alone changes: a new generation, nothing encoded
    gen = idx.info().generation
    calls = _count_encodes(monkeypatch)
    report = idx.index([docs], metadata={"atlas.pdf": {"year": 2024}, "bestiary.pdf": {"year": 2023}})
    assert calls == [] and report.chunks_written == 0
    assert report.metadata_updated == [atlas, bestiary] and report.changed and report.indexed == []
    assert idx.info().generation == gen + 1
    assert {h.source for h in idx.search("penguin", k=10, where={"year": 2023})} == {bestiary}
    assert idx.store.current().manifest.files[meteor].metadata == {"year": 2021, "kind": "note"}  # kept
    again = idx.index([docs], metadata={"atlas.pdf": {"year": 2024}})
    assert not again.changed and idx.info().generation == gen + 1
    # a changed file keeps its metadata when the call gives none
    (docs / "notes" / "meteor.md").write_text("# Field notes\n\nA new meteor text.\n", encoding="utf-8")
    upd = idx.index([docs])
    assert upd.indexed == [meteor] and idx.search("meteor", k=1, where={"year": 2021})[0].source == meteor


@pytest.mark.slow
def test_colliding_metadata_key_builds_nothing(colbert_checkpoint: Path, docs: Path, tmp_path: Path) -> None:
    idx = ColbertIndexer("clash", model=colbert_checkpoint, index_root=tmp_path / "root", progress=False)
    with pytest.raises(ConfigurationError, match="'page_count'"):
        idx.index([docs], metadata={"atlas.pdf": {"page_count": 9}})
    assert not idx.store.exists()


@pytest.mark.slow
def test_exact_subset_is_complete_and_exact(colbert_checkpoint: Path, tmp_path: Path) -> None:
    from colbert_modal.engine import get_engine

    eng = get_engine(str(colbert_checkpoint))
    words = "aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine".split()
    texts = [" ".join(words[(i * 3 + j) % len(words)] for j in range(1 + i % 5)) for i in range(60)]
    eng.build_exact(texts, tmp_path / "e", max_tokens=32)
    index = eng.open(tmp_path / "e", "exact", texts)
    query = "glacier harbour aardvark"
    full = index.search([query], len(texts))[0]
    subset = np.array([3, 17, 29, 44, 58])  # scattered, none necessarily near the top
    got = index.search([query], 10, subset)[0]
    ref = [h for h in full if h[0] in set(subset.tolist())]
    assert len(got) == 5 and [p for p, _ in got] == [p for p, _ in ref]
    assert np.allclose([s for _, s in got], [s for _, s in ref], atol=1e-4)
    assert index.search([query], 2, np.array([], dtype=np.int64)) == [[]]


# --- PLAID: k-completeness ------------------------------------------------------------------


@pytest.mark.slow
def test_plaid_filter_returns_k_hits(
    colbert_checkpoint: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colbert_modal.engine import PlaidIndex

    monkeypatch.chdir(tmp_path)
    many = docs / "many"
    many.mkdir()
    words = "aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine kangaroo lantern".split()
    for i in range(40):
        text = " ".join(words[(i * 5 + j) % len(words)] for j in range(6)) + f". {' '.join(words[i % 12:])}"
        text += f". {' '.join(words[: 1 + i // 12])} note."  # no two files alike (duplicates are skipped)
        (many / f"n{i:02d}.txt").write_text(text, encoding="utf-8")
    meta = {f"n{i:02d}.txt": {"group": "rare" if i % 13 == 5 else "common"} for i in range(40)}
    idx = ColbertIndexer("plaid", model=colbert_checkpoint, index_root=tmp_path / "root", backend="plaid", progress=False)
    idx.index([docs], metadata=meta)
    assert idx.info().backend == "plaid"
    rare = {str(many / f"n{i:02d}.txt") for i in range(40) if i % 13 == 5}  # 3 chunks scattered over the index

    hits = idx.search("aardvark bicycle", k=10, where={"group": "rare"})
    assert {h.source for h in hits} == rare and len(hits) == 3
    # the candidate-restricting route (colbert-ai's filter_fn), falling back where short
    monkeypatch.setattr(PlaidIndex, "exhaustive_max", 0)
    hits2 = idx.search("aardvark bicycle", k=10, where={"group": "rare"})
    assert {h.source for h in hits2} == rare and len(hits2) == 3
    fallbacks: list[int] = []
    exhaustive = PlaidIndex._exhaustive
    monkeypatch.setattr(PlaidIndex, "_exhaustive", lambda self, *a: fallbacks.append(1) or exhaustive(self, *a))
    common = idx.search_batch(["kangaroo lantern", "penguin walrus"], k=5, where={"group": "common"})
    assert fallbacks == []  # 37 of 50 chunks match: colbert-ai's restricted candidates were enough
    assert [len(q) for q in common] == [5, 5]
    assert all(h.metadata["group"] == "common" for q in common for h in q)
    assert idx.search("penguin", k=4, where={"source": {"$glob": "*.pdf"}, "page": 2})  # PDFs' page 2 chunks
    assert all(h.pages == [2] for h in idx.search("penguin", k=4, where={"page": 2}))


# --- remote: through the Modal bodies ---------------------------------------------------------


@pytest.mark.slow
def test_remote_filters_run_in_the_container(
    colbert_checkpoint: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "inprocess")
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(volume))
    with ColbertIndexer("rem", model=colbert_checkpoint, mode="remote", index_root=tmp_path / "l", progress=False) as idx:
        idx.index(docs, metadata=META)
        hits = idx.search("penguin quartz", k=10, where={"year": 2023})
        assert {h.source for h in hits} == {str(docs / "atlas.pdf")} and len(hits) == 3
        assert hits[0].metadata["tags"] == ["geo"]
        assert idx.info().metadata_keys == {"kind": 2, "tags": 1, "year": 2}
        report = idx.index(docs, metadata={"bestiary.pdf": {"year": 2023}})
        assert report.metadata_updated == [str(docs / "bestiary.pdf")] and report.chunks_written == 0
        assert len(idx.search_batch(["penguin"], k=10, where={"year": 2023})[0]) == 5
        with pytest.raises(ConfigurationError, match="unknown operator"):
            idx.search("penguin", where={"year": {"$regex": "2"}})

    from colbert_modal import modal_app

    searcher = modal_app.Searcher(index_name="rem")
    got = searcher.search_batch.local(["walrus"], k=3, where={"source": {"$glob": "notes/*.txt"}})
    assert [h.source for h in got[0]] == [str(docs / "notes" / "plain.txt")]


# --- an index built before this change ------------------------------------------------------------

BEFORE_REV = "25027a0"  # the last revision without metadata or filters


@pytest.mark.slow
def test_index_built_before_filters_opens_searches_and_takes_metadata(
    tmp_path: Path, colbert_checkpoint: Path, corpus_dir: Path
) -> None:
    import io
    import tarfile

    if shutil.which("git") is None or subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_REV}^{{commit}}"], capture_output=True
    ).returncode:
        pytest.skip(f"revision {BEFORE_REV} is not in this checkout")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_REV, "src/colbert_modal"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(corpus_dir / "atlas.pdf", docs)
    shutil.copy(corpus_dir / "bestiary.pdf", docs)
    root = tmp_path / "indexes"
    script = textwrap.dedent(
        f"""
        from colbert_modal import ColbertIndexer
        ColbertIndexer("old", model={str(colbert_checkpoint)!r}, index_root={str(root)!r}, progress=False).index([{str(docs)!r}])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "old" / "src"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((root / "old" / "generations" / "g000001" / "manifest.json").read_text())
    assert all("metadata" not in e for e in manifest["files"].values())  # the old format

    idx = ColbertIndexer("old", index_root=root, progress=False)
    assert idx.info().metadata_keys == {}
    assert {h.source for h in idx.search("penguin", k=10, where={"source": {"$glob": "bestiary.pdf"}})} == {
        str(docs / "bestiary.pdf")
    }
    assert idx.search("penguin", k=10, where={"year": 2023}) == []
    report = idx.index([docs], metadata={"bestiary.pdf": {"year": 2023}})
    assert report.metadata_updated == [str(docs / "bestiary.pdf")] and report.chunks_written == 0
    hits = idx.search("penguin", k=10, where={"year": 2023})
    # every chunk the old release made of the file (with the test checkpoint's truncating tokenizer it saw
    # at most 128 tokens of a text, so its chunks are not today's)
    n_old = len(manifest["files"][str(docs / "bestiary.pdf")]["chunk_ids"])
    assert n_old >= 1 and len(hits) == n_old
    assert all(h.metadata["year"] == 2023 and h.metadata["type"] == "pdf" for h in hits)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_where_and_meta_parsing(tmp_path: Path) -> None:
    import click

    from colbert_modal.cli import parse_meta_options, parse_where_options

    assert parse_where_options([]) is None
    assert parse_where_options(["year=2023", "year!=2024", "n<3", "n>1", "tag=[1, 2]", "s~*.pdf", "t=x=y"]) == {
        "year": {"$eq": 2023, "$ne": 2024}, "n": {"$lt": 3, "$gt": 1}, "tag": {"$in": [1, 2]},
        "s": {"$glob": "*.pdf"}, "t": {"$eq": "x=y"},
    }
    assert parse_where_options(["flag=true", "name=\"2023\"", "v=null"]) == {
        "flag": {"$eq": True}, "name": {"$eq": "2023"}, "v": {"$eq": None}
    }
    assert parse_where_options(["page<=4"], '{"year": 2023}') == {"year": 2023, "page": {"$lte": 4}}
    for bad in (["year"], ["=3"], ["page>=1", "page>=2"]):
        with pytest.raises(click.BadParameter):
            parse_where_options(bad)
    for bad_json in ("{", "[1]"):
        with pytest.raises(click.BadParameter):
            parse_where_options([], bad_json)

    mj = tmp_path / "meta.json"
    mj.write_text(json.dumps({"reports/*.pdf": {"kind": "report"}}), encoding="utf-8")
    assert parse_meta_options(["C:/x/a.pdf:year=2023", "a.pdf:tags=[\"x\"]"], mj) == {
        "reports/*.pdf": {"kind": "report"}, "C:/x/a.pdf": {"year": 2023}, "a.pdf": {"tags": ["x"]},
    }
    for bad in (["a.pdf"], ["a.pdf=3"], [":k=1"]):
        with pytest.raises(click.BadParameter):
            parse_meta_options(bad)
    mj.write_text("[1]", encoding="utf-8")
    with pytest.raises(click.BadParameter):
        parse_meta_options([], mj)


@pytest.mark.slow
def test_cli_meta_where_and_info(colbert_checkpoint: Path, docs: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from colbert_modal.cli import cli

    root = tmp_path / "root"
    mj = tmp_path / "meta.json"
    mj.write_text(json.dumps({"notes/*": {"kind": "note"}}), encoding="utf-8")
    run = CliRunner()
    base = ["--name", "c", "--index-root", str(root)]
    out = run.invoke(cli, ["index", str(docs), *base, "--model", str(colbert_checkpoint),
                           "--meta", "atlas.pdf:year=2023", "--meta-json", str(mj)])  # fmt: skip
    assert out.exit_code == 0, out.output
    res = run.invoke(cli, ["search", "penguin", *base, "--json", "--where", "year=2023", "--where", "page>=2"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert {Path(h["source"]).name for h in hits} == {"atlas.pdf"} and sorted(h["pages"][0] for h in hits) == [2, 3]
    assert all(h["metadata"]["year"] == 2023 for h in hits)
    res = run.invoke(cli, ["search", "walrus", *base, "--json", "--where-json", '{"kind": "note", "type": "text"}'])
    assert [Path(h["source"]).name for h in json.loads(res.stdout)] == ["plain.txt"]
    bad = run.invoke(cli, ["search", "walrus", *base, "--where-json", '{"year": {"$bad": 1}}'])
    assert bad.exit_code == 2 and "unknown operator" in bad.stderr
    info = run.invoke(cli, ["info", "c", "--index-root", str(root)])
    assert "metadata:\n  kind (2 files)\n  year (1 file)\n" in info.stdout
    again = run.invoke(cli, ["index", str(docs), *base, "--meta", "bestiary.pdf:year=2023"])
    assert "Metadata updated: 1 file (nothing re-encoded)." in again.stdout and "Chunks: 0 written" in again.stdout
