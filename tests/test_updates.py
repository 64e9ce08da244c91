"""Indexes stay correct as folders change, and survive interruptions and rivals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from colbert_modal import (
    ColbertIndexer,
    IndexLockedError,
    IndexStorageError,
    InvalidIndexNameError,
    SettingsMismatchError,
)
from colbert_modal.store import IndexStore
from helpers import kill_when_reached, make_text_pdf

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path: Path, corpus_dir: Path) -> Path:
    dest = tmp_path / "docs"
    shutil.copytree(corpus_dir, dest)
    return dest


@pytest.fixture
def indexer(colbert_checkpoint: Path, tmp_path: Path) -> ColbertIndexer:
    return ColbertIndexer("inc", model=colbert_checkpoint, index_root=tmp_path / "root", progress=False)


def _sources(idx: ColbertIndexer, query: str, k: int = 50) -> set[str]:
    return {Path(h.source).name for h in idx.search(query, k=k)}


def test_unchanged_folder_does_no_engine_work(indexer: ColbertIndexer, folder: Path) -> None:
    first = indexer.index([folder])
    gen = indexer.info().generation
    again = indexer.index([folder])
    assert not again.changed and again.chunks_written == 0 and again.indexed == []
    assert sorted(again.unchanged) == sorted(first.indexed)
    assert again.timings["engine"] == 0.0
    assert indexer.info().generation == gen  # nothing was published


def test_new_changed_and_removed_files(indexer: ColbertIndexer, folder: Path) -> None:
    indexer.index([folder])
    before = indexer.info()
    atlas_ids = {h.chunk_id for h in indexer.search("kangaroo", k=50) if h.source.endswith("atlas.pdf")}

    make_text_pdf(folder / "new.pdf", ["a zeppelin over the glacier"])  # new
    (folder / "notes" / "plain.txt").write_text("now about a flamingo and a dolphin\n", encoding="utf-8")  # changed
    (folder / "bestiary.pdf").unlink()  # gone

    report = indexer.index([folder])
    assert [Path(p).name for p in report.indexed] == ["new.pdf", "plain.txt"]
    assert [Path(p).name for p in report.removed] == ["bestiary.pdf"]
    assert report.chunks_written == 2  # only new chunks were encoded (exact backend)
    info = indexer.info()
    assert info.generation == before.generation + 1
    assert "bestiary.pdf" not in _sources(indexer, "penguin quartz walrus")
    assert "plain.txt" in _sources(indexer, "flamingo dolphin")
    assert "walrus" not in " ".join(h.text for h in indexer.search("walrus", k=50) if h.source.endswith("plain.txt"))
    # unchanged files keep their chunk ids
    assert atlas_ids == {h.chunk_id for h in indexer.search("kangaroo", k=50) if h.source.endswith("atlas.pdf")}

    # a fresh indexer (as after a restart) sees the same
    fresh = ColbertIndexer("inc", index_root=indexer.index_root)
    assert "bestiary.pdf" not in _sources(fresh, "penguin quartz walrus")


def test_keep_missing_keeps_chunks_of_deleted_files(indexer: ColbertIndexer, folder: Path) -> None:
    indexer.index([folder])
    (folder / "bestiary.pdf").unlink()
    report = indexer.index([folder], keep_missing=True)
    assert report.removed == [] and not report.changed
    assert "bestiary.pdf" in _sources(indexer, "penguin quartz")


def test_indexing_another_folder_keeps_what_is_indexed(indexer: ColbertIndexer, folder: Path, tmp_path: Path) -> None:
    """index(A) then index(B): A's files stay (they were dropped, unreported, when B added a file)."""
    first = indexer.index([folder])
    other = tmp_path / "other"
    other.mkdir()
    (other / "harbour.txt").write_text("A dolphin in the harbour.\n", encoding="utf-8")
    report = indexer.index([other])
    assert report.indexed == [str(other / "harbour.txt")] and report.removed == []
    assert str(folder / "bestiary.pdf") in report.unchanged
    assert report.documents_total == len(indexer.info().sources) == first.documents_total + 1
    assert "bestiary.pdf" in _sources(indexer, "penguin quartz")
    # and keep_missing keeps a deleted file while another one changes
    (folder / "bestiary.pdf").unlink()
    (folder / "notes" / "plain.txt").write_text("A walrus and a zeppelin.\n", encoding="utf-8")
    report = indexer.index([folder], keep_missing=True)
    assert report.indexed == [str(folder / "notes" / "plain.txt")] and report.removed == []
    assert "bestiary.pdf" in _sources(indexer, "penguin quartz")


def test_delete_paths(indexer: ColbertIndexer, folder: Path) -> None:
    indexer.index([folder])
    report = indexer.delete([folder / "bestiary.pdf", folder / "notes", folder / "never-indexed.pdf"])
    assert sorted(Path(p).name for p in report.removed) == ["bestiary.pdf", "meteor.md", "plain.txt"]
    assert [Path(s.path).name for s in report.skipped] == ["never-indexed.pdf"]
    assert not {"bestiary.pdf", "plain.txt"} & _sources(indexer, "penguin walrus umbrella")
    reopened = ColbertIndexer("inc", index_root=indexer.index_root)
    assert not {"bestiary.pdf", "plain.txt"} & _sources(reopened, "penguin walrus umbrella")
    # re-indexing the folder brings them back
    assert sorted(Path(p).name for p in indexer.index([folder]).indexed) == ["bestiary.pdf", "meteor.md", "plain.txt"]


def test_changing_settings_needs_rebuild(indexer: ColbertIndexer, folder: Path, colbert_checkpoint: Path) -> None:
    indexer.index([folder / "notes"])
    other = ColbertIndexer("inc", model=colbert_checkpoint, index_root=indexer.index_root, max_tokens=128, progress=False)
    with pytest.raises(SettingsMismatchError, match="max_tokens.*rebuild=True"):
        other.index([folder / "notes"])
    report = other.index([folder / "notes"], rebuild=True)
    assert report.changed and other.info().max_tokens == 128
    # the model an index was built with is the default when reopening
    assert ColbertIndexer("inc", index_root=indexer.index_root).model == str(colbert_checkpoint)


def test_duplicate_content_is_indexed_once(indexer: ColbertIndexer, folder: Path) -> None:
    shutil.copy(folder / "atlas.pdf", folder / "atlas-copy.pdf")
    report = indexer.index([folder])
    dup = [s for s in report.skipped if "same content as" in s.reason]
    assert len(dup) == 1 and Path(dup[0].path).name in {"atlas.pdf", "atlas-copy.pdf"}
    assert len([p for p in report.indexed if "atlas" in p]) == 1


def test_previously_indexed_file_that_breaks_is_kept(indexer: ColbertIndexer, folder: Path) -> None:
    indexer.index([folder])
    (folder / "atlas.pdf").write_bytes(b"%PDF-1.4 truncated")
    report = indexer.index([folder])
    assert any(s.path.endswith("atlas.pdf") for s in report.skipped)
    assert any("kept the previously indexed version" in w.message for w in report.warnings)
    assert "atlas.pdf" in _sources(indexer, "kangaroo nebula")


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", "", "with space", "x" * 200, "-lead"])
def test_index_names_are_validated(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidIndexNameError):
        ColbertIndexer(name, index_root=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_root_is_a_clear_error(tmp_path: Path, folder: Path, colbert_checkpoint: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    with pytest.raises(IndexStorageError, match="not writable"):
        ColbertIndexer("x", model=colbert_checkpoint, index_root=root).index([folder])


def test_root_that_is_a_file_is_a_clear_error(tmp_path: Path, folder: Path, colbert_checkpoint: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexStorageError, match="not writable"):
        ColbertIndexer("x", model=colbert_checkpoint, index_root=tmp_path / "file").index([folder / "notes"])


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from colbert_modal.store import IndexStore
    store = IndexStore(sys.argv[1], "inc")
    with store.lock():
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_second_writer_fails_clearly_or_waits(indexer: ColbertIndexer, folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(indexer.index_root), "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        t = time.monotonic()
        with pytest.raises(IndexLockedError, match="another process"):
            indexer.index([folder / "notes"])
        assert time.monotonic() - t < 2
        waiting = ColbertIndexer("inc", model=indexer.model, index_root=indexer.index_root, lock_timeout=60, progress=False)
        assert waiting.index([folder / "notes"]).changed  # waited for the lock, then indexed
    finally:
        proc.kill()
        proc.wait()


_KILLED_MID_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from colbert_modal import ColbertIndexer
    from colbert_modal import engine

    original = engine.Engine.build_exact

    def slow_build(self, texts, dest, **kw):
        original(self, texts, dest, **kw)          # half the work is on disk ...
        Path(sys.argv[3]).write_text("building")   # ... tell the test, then hang
        time.sleep(600)

    engine.Engine.build_exact = slow_build
    idx = ColbertIndexer("inc", model=sys.argv[1], index_root=sys.argv[2], progress=False)
    idx.index([sys.argv[4]])
    """
)


def test_killed_build_leaves_the_published_index_intact(indexer: ColbertIndexer, folder: Path, tmp_path: Path) -> None:
    indexer.index([folder / "atlas.pdf"])
    before = indexer.search("kangaroo nebula", k=3)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_BUILD, indexer.model, str(indexer.index_root), str(marker), str(folder)]
    )
    kill_when_reached(proc, marker, "the build")
    store = IndexStore(indexer.index_root, "inc")
    assert [p.name for p in (store.path / "generations").glob(".g*")]  # the half-built generation
    reopened = ColbertIndexer("inc", index_root=indexer.index_root)
    assert [h.chunk_id for h in reopened.search("kangaroo nebula", k=3)] == [h.chunk_id for h in before]
    assert reopened.info().sources == [str(folder / "atlas.pdf")]
    # the next writer cleans up and completes the update
    report = reopened.index([folder])
    assert report.changed
    assert not list((store.path / "generations").glob(".g*"))
    assert "bestiary.pdf" in _sources(reopened, "penguin quartz")


def test_exception_mid_build_leaves_the_published_index_intact(
    indexer: ColbertIndexer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colbert_modal import engine

    indexer.index([folder / "atlas.pdf"])

    def boom(self, *a, **kw):
        raise KeyboardInterrupt  # like Ctrl-C during encoding

    monkeypatch.setattr(engine.Engine, "build_exact", boom)
    with pytest.raises(KeyboardInterrupt):
        indexer.index([folder])
    monkeypatch.undo()
    assert indexer.info().sources == [str(folder / "atlas.pdf")]
    assert indexer.search("kangaroo", k=1)[0].source.endswith("atlas.pdf")


def test_drop_removes_the_index(indexer: ColbertIndexer, folder: Path) -> None:
    indexer.index([folder / "notes"])
    indexer.drop()
    assert not indexer.store.path.exists()


def test_reopening_uses_the_index_chunk_settings(colbert_checkpoint: Path, tmp_path: Path, folder: Path) -> None:
    built = ColbertIndexer("small", model=colbert_checkpoint, index_root=tmp_path / "r", max_tokens=64, overlap=4)
    built.index([folder / "notes"])
    again = ColbertIndexer("small", index_root=tmp_path / "r")
    assert (again.max_tokens, again.overlap) == (64, 4)
    assert not again.index([folder / "notes"]).changed  # no SettingsMismatchError
    assert again.delete([folder / "notes" / "plain.txt"]).removed


def test_filesystem_without_locks_still_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import errno

    from colbert_modal import store as store_mod

    def no_locks(fh) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store_mod, "_flock", no_locks)
    store = IndexStore(tmp_path, "nolocks")
    with store.lock():
        assert (store.path / "LOCK").read_text().strip() == str(os.getpid())
    assert "no file locks" in caplog.text
