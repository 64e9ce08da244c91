"""End to end on the real engine: PDFs in, ColBERT search out (tiny lexical checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pypdf
import pytest

from colbert_modal import (
    ColbertIndexer,
    ConfigurationError,
    IndexNotFoundError,
    NoDocumentsError,
    SearchResult,
)
from helpers import make_blank_pdf

PDFS = Path(__file__).parent / "data" / "pdfs"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any attempt to open a network connection."""
    attempts: list[object] = []

    def guard(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"network access attempted in a test: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket.socket, "connect_ex", guard)
    return attempts


@pytest.fixture
def messy_folder(tmp_path: Path, corpus_dir: Path) -> Path:
    """The corpus plus a broken, an encrypted and a scanned PDF."""
    folder = tmp_path / "messy"
    shutil.copytree(corpus_dir, folder)
    data = (PDFS / "pdflatex-4-pages.pdf").read_bytes()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 3])
    shutil.copy(PDFS / "encrypted-password-example.pdf", folder / "locked.pdf")
    make_blank_pdf(folder / "scanned.pdf")
    (folder / "slides.pptx").write_bytes(b"not supported")
    return folder


@pytest.mark.slow
def test_index_messy_folder_then_search(
    messy_folder: Path, colbert_checkpoint: Path, tmp_path: Path, no_network: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    idx = ColbertIndexer("messy", model=colbert_checkpoint, index_root=tmp_path / "root", progress=False)

    report = idx.index([messy_folder])

    indexed = {Path(p).name for p in report.indexed}
    assert {"atlas.pdf", "bestiary.pdf", "minimal-document.pdf", "pdflatex-4-pages.pdf", "meteor.md", "plain.txt"} <= indexed
    assert "images-only-imagemagick.pdf" in indexed  # pages with text are indexed ...
    assert any("page(s) 4-5" in w.message for w in report.warnings)  # ... and the empty ones named
    skipped = {Path(s.path).name: s for s in report.skipped}
    assert skipped["truncated.pdf"].error == "CorruptFileError"
    assert skipped["locked.pdf"].error == "EncryptedPDFError" and "password" in skipped["locked.pdf"].reason
    assert skipped["scanned.pdf"].error == "NoTextLayerError" and "OCR" in skipped["scanned.pdf"].reason
    assert skipped["slides.pptx"].error == "UnsupportedFileTypeError"
    assert report.chunks_total == report.chunks_written > 0
    assert set(report.timings) >= {"load", "chunk", "encode_and_build"}

    hits = idx.search("walrus xylophone zeppelin", k=3)
    assert isinstance(hits, list) and all(isinstance(h, SearchResult) for h in hits)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score
    top = hits[0]
    assert Path(top.source).name == "bestiary.pdf" and top.pages == [2]
    # every page number a result carries exists in its source file
    for query in ("nebula origami", "information font", "lorem ipsum", "background"):
        for hit in idx.search(query, k=5):
            if hit.source.endswith(".pdf"):
                n_pages = len(pypdf.PdfReader(hit.source).pages)
                assert all(1 <= p <= n_pages for p in hit.pages)
    assert Path(idx.search("kangaroo lantern meteor", k=1)[0].source).name == "atlas.pdf"
    assert idx.search("kangaroo lantern meteor", k=1)[0].pages == [3]

    assert os.listdir(workdir) == []  # nothing written to the working directory
    assert no_network == []


@pytest.mark.slow
def test_search_batch_shapes(built_index) -> None:
    kwargs, _ = built_index
    idx = ColbertIndexer("shared", **kwargs)
    many = idx.search_batch(["penguin quartz", "glacier harbour", "dolphin"], k=2)
    assert len(many) == 3 and all(len(hits) == 2 for hits in many)
    assert Path(many[0][0].source).name == "bestiary.pdf" and many[0][0].pages == [1]
    assert Path(many[1][0].source).name in {"atlas.pdf", "meteor.md"}
    assert idx.search_batch([], k=3) == []
    one = idx.search_batch(["penguin"], k=1)
    assert len(one) == 1 and len(one[0]) == 1  # a list of lists, even for one query
    assert idx.search("penguin", k=100)  # k larger than the collection is fine
    assert len(idx.search("penguin", k=100)) == idx.info().chunks


def test_search_rejects_bad_queries(built_index) -> None:
    kwargs, _ = built_index
    idx = ColbertIndexer("shared", **kwargs)
    with pytest.raises(ConfigurationError, match="search_batch"):
        idx.search(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="search\\(\\)"):
        idx.search_batch("a single string")
    with pytest.raises(ConfigurationError):
        idx.search("   ")
    with pytest.raises(ConfigurationError):
        idx.search("ok", k=0)


def test_dispatch_local_explicit(built_index) -> None:
    kwargs, _ = built_index
    idx = ColbertIndexer("shared", **kwargs)
    assert idx.search.local("penguin", k=1)[0].rank == 1
    assert "mode='local'" in repr(idx.search)


@pytest.mark.slow
def test_fresh_process_reopens_index(built_index, tmp_path: Path) -> None:
    kwargs, _ = built_index
    script = (
        "import json, sys\n"
        "from colbert_modal import ColbertIndexer\n"
        "idx = ColbertIndexer('shared', index_root=sys.argv[1], progress=False)\n"
        "hits = idx.search('penguin quartz rhubarb', k=2)\n"
        "print(json.dumps([h.model_dump() for h in hits]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, kwargs["index_root"]],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    hits = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(hits[0]["source"]).name == "bestiary.pdf" and hits[0]["pages"] == [1]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_plaid_backend(colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    idx = ColbertIndexer("plaid", model=colbert_checkpoint, index_root=tmp_path / "root", backend="plaid", progress=False)
    report = idx.index([corpus_dir])
    assert idx.info().backend == "plaid"
    hits = idx.search("umbrella volcano walrus", k=3)
    assert Path(hits[0].source).name == "bestiary.pdf" and hits[0].pages == [2]
    # a new indexer (no cached state) reopens the PLAID index
    again = ColbertIndexer("plaid", index_root=tmp_path / "root", progress=False)
    assert again.search("umbrella volcano walrus", k=1)[0].chunk_id == hits[0].chunk_id
    assert report.chunks_total == again.info().chunks
    assert sorted(os.listdir(tmp_path)) == ["root"]  # no ./experiments or .ragatouille


def test_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    idx = ColbertIndexer("nothing-here", index_root=tmp_path)
    with pytest.raises(IndexNotFoundError, match="nothing-here"):
        idx.search("anything")
    with pytest.raises(IndexNotFoundError):
        idx.info()


def test_nothing_indexable_raises_with_report(colbert_checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "zero.pdf").write_bytes(b"")
    idx = ColbertIndexer("x", model=colbert_checkpoint, index_root=tmp_path / "root")
    with pytest.raises(NoDocumentsError) as info:
        idx.index([empty, tmp_path / "zero.pdf", tmp_path / "missing.md"])
    report = info.value.report
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert "no .pdf" in reasons["empty"]
    assert "0 bytes" in reasons["zero.pdf"]
    assert "no such file" in reasons["missing.md"]
    assert not idx.store.exists()


def test_default_index_root_is_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLBERT_MODAL_INDEX_ROOT")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    idx = ColbertIndexer("n")
    assert idx.index_root == (tmp_path / "xdg" / "colbert-modal")
    monkeypatch.setenv("COLBERT_MODAL_INDEX_ROOT", str(tmp_path / "env-root"))
    assert ColbertIndexer("n").index_root == tmp_path / "env-root"


def test_unknown_hub_model_offline_is_clear(tmp_path: Path, corpus_dir: Path) -> None:
    from colbert_modal import ModelLoadError

    idx = ColbertIndexer("m", model="nobody/no-such-colbert", index_root=tmp_path)
    with pytest.raises(ModelLoadError, match="nobody/no-such-colbert") as info:
        idx.index([corpus_dir / "notes"])
    assert "local" in str(info.value) and "model=" in str(info.value)
    with pytest.raises(ModelLoadError, match="no such checkpoint directory"):
        ColbertIndexer("m2", model=str(tmp_path / "nope"), index_root=tmp_path).index([corpus_dir / "notes"])


@pytest.mark.slow
def test_plaid_build_encodes_each_passage_once(
    colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colbert.modeling.checkpoint import Checkpoint

    encoded: list[int] = []
    original = Checkpoint.doc

    def counting(self, input_ids, *args, **kwargs):  # every document forward pass, whatever calls it
        encoded.append(int(input_ids.shape[0]))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "doc", counting)
    idx = ColbertIndexer("once", model=colbert_checkpoint, index_root=tmp_path, backend="plaid", progress=False)
    report = idx.index([corpus_dir])
    unique_texts = {c.text for c in idx.store.current().chunks()}
    # raw colbert-ai encodes every passage twice; here each distinct text once
    assert sum(encoded) == len(unique_texts) <= report.chunks_total
    assert Path(idx.search("penguin quartz rhubarb", k=1)[0].source).name == "bestiary.pdf"
