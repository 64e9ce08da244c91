"""Safe to embed in an app: threads, damaged indexes, bad names, full disks.

Each test reproduces one finding of the issue with the real engine (the tiny
lexical checkpoint) and real files; faults are injected only where a real
one cannot be made here (a full disk: one write raises ENOSPC).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from colbert_modal import (
    ColbertIndexer,
    ConfigurationError,
    IndexStorageError,
    InvalidIndexNameError,
)
from colbert_modal.cli import cli
from colbert_modal.engine import get_engine
from colbert_modal.search import LiveIndex
from colbert_modal.store import IndexStore, list_indexes, validate_index_name
from colbert_modal.testing import write_tiny_checkpoint

pytestmark = pytest.mark.slow

WORDS = ["aardvark", "bicycle", "carousel", "dolphin", "espresso", "flamingo", "glacier", "harbour"]


def _docs(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"note{i}.txt").write_text(f"{WORDS[i]} and {WORDS[i + 1]} in note {i}.\n", encoding="utf-8")
    return folder


def _indexer(ckpt: Path, root: Path, name: str = "safe", **kwargs) -> ColbertIndexer:
    return ColbertIndexer(name, model=ckpt, index_root=root, progress=False, **kwargs)


def _gen_dir(idx: ColbertIndexer) -> Path:
    return idx.store.generation_path(idx.store.current_generation_name() or "")


def _cli(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


# --- 1, 2: threads ----------------------------------------------------------------


def _first_queries_in_threads(checkpoints: list[Path], precisions: list[str | None]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(checkpoints))

    def run(ckpt: Path, precision: str | None) -> None:
        try:
            engine = get_engine(ckpt, precision=precision)
            barrier.wait(timeout=600)
            engine.encode_queries(["hello walrus"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in zip(checkpoints, precisions, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_models_loading_at_once_in_two_threads_both_work(tmp_path: Path) -> None:
    """Item 1: two checkpoints (and one at two precisions) first used from threads at once."""
    a = write_tiny_checkpoint(tmp_path / "ckpt-a")
    b = write_tiny_checkpoint(tmp_path / "ckpt-b")
    assert _first_queries_in_threads([a, b, a], ["fp32", "fp32", "auto"]) == []
    c = write_tiny_checkpoint(tmp_path / "ckpt-c")  # a third engine still loads afterwards
    assert get_engine(c).encode_queries(["hello"]).shape[0] == 1


def test_upstream_output_never_replaces_the_process_streams(tmp_path: Path, monkeypatch) -> None:
    """Item 2: another thread's prints all arrive; the streams stay the app's own."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    stop = threading.Event()
    printed = []

    def printer() -> None:
        i = 0
        while (not stop.is_set() or i < 700) and i < 200_000:
            print(f"app line {i}")
            printed.append(i)
            i += 1
            if i % 50 == 0:
                stop.wait(0.001)

    ckpts = [write_tiny_checkpoint(tmp_path / f"ckpt-{i}") for i in range(2)]
    t = threading.Thread(target=printer)
    t.start()
    try:
        errors = _first_queries_in_threads(ckpts, [None, None])
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert sys.stdout is out and sys.stderr is err
    lines = out.getvalue().splitlines()
    assert lines == [f"app line {i}" for i in printed]
    assert len(lines) >= 700


# --- 3, 11: bad input never stops the batch ----------------------------------------


def test_file_name_not_utf8_is_skipped_and_the_rest_indexed(colbert_checkpoint: Path, tmp_path: Path) -> None:
    """Item 3."""
    docs = _docs(tmp_path / "docs", 2)
    bad = os.path.join(os.fsencode(docs), b"bad-\xff-name.txt")
    with open(bad, "wb") as fh:
        fh.write(b"glacier and harbour\n")
    idx = _indexer(colbert_checkpoint, tmp_path / "root")
    report = idx.index([docs])
    assert sorted(Path(p).name for p in report.indexed) == ["note0.txt", "note1.txt"]
    [skip] = [s for s in report.skipped if "bad-" in s.path]
    assert "UTF-8" in skip.reason
    report.model_dump_json()  # the report itself serialises
    (docs / "note2.txt").write_text("a third note about dolphin\n", encoding="utf-8")
    again = idx.index([docs])  # later updates of the folder still work
    assert [Path(p).name for p in again.indexed] == ["note2.txt"]


def test_a_file_over_the_chunk_cap_is_skipped_not_truncated(colbert_checkpoint: Path, tmp_path: Path) -> None:
    """Item 11."""
    docs = _docs(tmp_path / "docs", 2)
    (docs / "huge.txt").write_text(" ".join(f"walrus{i}" for i in range(3000)), encoding="utf-8")
    idx = _indexer(colbert_checkpoint, tmp_path / "root", max_tokens=32)
    report = idx.index([docs], max_chunks_per_file=20)
    assert sorted(Path(p).name for p in report.indexed) == ["note0.txt", "note1.txt"]
    [skip] = [s for s in report.skipped if s.path.endswith("huge.txt")]
    assert "max_chunks_per_file" in skip.reason and "20" in skip.reason
    assert report.chunks_total == 2
    with pytest.raises(ConfigurationError, match="max_chunks_per_file"):
        idx.index([docs], max_chunks_per_file=0)
    assert idx.index([docs]).indexed == [str(docs / "huge.txt")]  # the default cap is generous


# --- 4, 5, 6, 9: damaged indexes -----------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path) -> tuple[Path, Path]:
    """(an index root holding index 'safe' of 4 notes, the notes folder); copy before damaging."""
    base = tmp_path_factory.mktemp("pristine")
    docs = _docs(base / "docs", 4)
    _indexer(colbert_checkpoint, base / "root").index([docs])
    return base / "root", docs


@pytest.fixture
def damaged(tmp_path: Path, colbert_checkpoint: Path) -> tuple[ColbertIndexer, Path]:
    """(an indexer of a fresh index of 4 notes, the notes folder): to damage."""
    docs = _docs(tmp_path / "docs", 4)
    idx = _indexer(colbert_checkpoint, tmp_path / "root")
    idx.index([docs])
    return idx, docs


def _drop_lines(path: Path, keep: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:keep]), encoding="utf-8")


def test_update_over_lost_chunk_lines_refuses_and_rebuild_repairs(damaged) -> None:
    """Item 4 (and 9's 'a later update carries it on')."""
    idx, docs = damaged
    _drop_lines(_gen_dir(idx) / "chunks.jsonl", 2)
    (docs / "note9.txt").write_text("origami penguin\n", encoding="utf-8")
    with pytest.raises(IndexStorageError, match=r"chunks\.jsonl.*rebuild=True"):
        idx.index([docs])
    report = idx.index([docs], rebuild=True)
    assert report.documents_total == 5 and report.chunks_total == 5


def _damage(kind: str, idx: ColbertIndexer) -> str:
    """Damage the index one way; returns the file the error must name."""
    gen = _gen_dir(idx)
    if kind == "manifest-list":
        (gen / "manifest.json").write_text("[1, 2]", encoding="utf-8")
        return "manifest.json"
    if kind == "manifest-empty":
        (gen / "manifest.json").write_text("{}", encoding="utf-8")
        return "manifest.json"
    if kind == "current-bytes":
        (idx.store.path / "CURRENT").write_bytes(b"\xff\xfe\x00g1")
        return "CURRENT"
    if kind == "chunks-truncated":
        text = (gen / "chunks.jsonl").read_text(encoding="utf-8")
        (gen / "chunks.jsonl").write_text(text[: len(text) // 2], encoding="utf-8")
        return "chunks.jsonl"
    if kind == "chunks-missing":
        (gen / "chunks.jsonl").unlink()
        return "chunks.jsonl"
    if kind == "chunks-swapped":
        lines = (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        lines[0], lines[1] = lines[1], lines[0]
        (gen / "chunks.jsonl").write_text("".join(lines), encoding="utf-8")
        return "chunks.jsonl"
    if kind == "embeddings-garbled":
        path = gen / "engine" / "embeddings.npy"
        data = bytearray(path.read_bytes())
        data[200:] = b"\xff" * (len(data) - 200)  # NaN float16s
        path.write_bytes(bytes(data))
        return "embeddings.npy"
    if kind == "embeddings-short":
        path = gen / "engine" / "embeddings.npy"
        path.write_bytes(path.read_bytes()[:300])
        return "embeddings.npy"
    raise AssertionError(kind)


DAMAGE = [
    "manifest-list", "manifest-empty", "current-bytes", "chunks-truncated", "chunks-missing",
    "chunks-swapped", "embeddings-garbled", "embeddings-short",
]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_index_gives_library_errors_and_repairs(kind: str, damaged, colbert_checkpoint: Path) -> None:
    """Items 5, 6, 9: a library error naming the file; no NaN hits; rebuild and delete still work."""
    idx, docs = damaged
    culprit = _damage(kind, idx)
    fresh = _indexer(colbert_checkpoint, idx.index_root)
    with pytest.raises(IndexStorageError) as caught:
        fresh.search("dolphin")
    assert culprit in str(caught.value) and "rebuild" in str(caught.value)
    (docs / "note9.txt").write_text("origami penguin\n", encoding="utf-8")
    with pytest.raises(IndexStorageError):
        _indexer(colbert_checkpoint, idx.index_root).index([docs])
    listed = _cli(["list", "--index-root", idx.index_root])
    _no_traceback(listed)
    # rebuild repairs it in place
    report = _indexer(colbert_checkpoint, idx.index_root).index([docs], rebuild=True)
    assert report.documents_total == 5
    hits = _indexer(colbert_checkpoint, idx.index_root).search("dolphin", k=5)
    assert hits and all(h.score == h.score for h in hits)  # no NaN


@pytest.mark.parametrize("kind", ["manifest-list", "current-bytes", "chunks-missing"])
def test_delete_works_on_a_damaged_index(kind: str, damaged) -> None:
    """Item 6: `colbert-modal delete N --yes` and drop()."""
    idx, _ = damaged
    _damage(kind, idx)
    result = _cli(["delete", "safe", "--yes", "--index-root", idx.index_root])
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert not idx.store.path.exists()


def test_queries_that_cannot_be_encoded_and_bool_k_are_configuration_errors(pristine, colbert_checkpoint) -> None:
    """Item 5: a lone surrogate in a query; k=True."""
    idx = _indexer(colbert_checkpoint, pristine[0])
    with pytest.raises(ConfigurationError, match="query"):
        idx.search("dolphin \ud800")
    with pytest.raises(ConfigurationError, match="k must"):
        idx.search("dolphin", k=True)


# --- 5, 7: a full disk -----------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["current", "engine"])
def test_full_disk_is_a_storage_error_and_leaves_nothing_behind(where: str, damaged, monkeypatch) -> None:
    """Items 5 and 7: ENOSPC while writing CURRENT or the engine files."""
    idx, docs = damaged
    before = idx.info().generation
    store_mod = sys.modules["colbert_modal.store"]
    if where == "current":
        monkeypatch.setattr(store_mod, "_write_text_atomic", _enospc)
    else:
        from colbert_modal.engine import Engine

        monkeypatch.setattr(Engine, "build_exact", _enospc)
    (docs / "note9.txt").write_text("origami penguin\n", encoding="utf-8")
    with pytest.raises(IndexStorageError, match="free space"):
        idx.index([docs])
    gens = sorted(p.name for p in (idx.store.path / "generations").iterdir())
    assert gens == [f"g{before:06d}"], gens  # the unpublished generation was removed
    assert idx.info().generation == before and idx.search("dolphin")
    result = _cli(["index", docs, "-n", "safe", "--index-root", idx.index_root])
    _no_traceback(result)
    assert result.exit_code != 0 and "free space" in result.output
    monkeypatch.undo()
    assert idx.index([docs]).indexed == [str(docs / "note9.txt")]


def test_next_writer_removes_unpublished_generations_and_stray_tmp_files(damaged) -> None:
    """Item 7: leftovers of kill -9 / full disks go at the next update."""
    idx, docs = damaged
    cur = _gen_dir(idx)
    shutil.copytree(cur, cur.parent / "g000007")  # unpublished
    (idx.store.path / ".CURRENT.424242.tmp").write_text("g000007\n", encoding="utf-8")
    (docs / "note9.txt").write_text("origami penguin\n", encoding="utf-8")
    idx.index([docs])
    now = idx.store.current_generation_name()
    assert sorted(p.name for p in (idx.store.path / "generations").iterdir()) == sorted({cur.name, now})
    assert not list(idx.store.path.glob(".CURRENT.*"))


# --- 8: readers racing a writer -----------------------------------------------------------


def test_reader_that_loses_the_race_with_a_prune_retries(damaged, colbert_checkpoint: Path) -> None:
    """Item 8: the generation a reader was about to open is pruned under it."""
    idx, docs = damaged
    writer = _indexer(colbert_checkpoint, idx.index_root)
    reader = _indexer(colbert_checkpoint, idx.index_root)
    calls: list[str] = []
    opener = reader._local.live._opener

    def racing_opener(name: str):
        calls.append(name)
        if len(calls) == 1:  # two publishes land between reading CURRENT and opening
            for i in (8, 9):
                (docs / f"note{i}.txt").write_text(f"origami penguin {i}\n", encoding="utf-8")
                writer.index([docs])
            assert not idx.store.generation_path(name).exists()
        return opener(name)

    live = LiveIndex(reader.store, racing_opener)
    opened = live.current()
    assert opened.name == idx.store.current_generation_name() and len(calls) == 2


# --- 10: names and paths -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abc\n", "CON", "nul", "Com1", "lpt9", "aux"])
def test_bad_index_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidIndexNameError):
        validate_index_name(name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "CURRENT").write_text("g000001\n", encoding="utf-8")
    assert list_indexes(tmp_path) == []


def test_symlinks_leaving_the_folders_are_skipped_and_reported(colbert_checkpoint: Path, tmp_path: Path) -> None:
    """Item 10: outside file links, folder links and loops are reported; follow_symlinks=True follows."""
    docs = _docs(tmp_path / "docs", 2)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("kangaroo secret\n", encoding="utf-8")
    (outside / "other.txt").write_text("quartz other\n", encoding="utf-8")
    (docs / "secret-link.txt").symlink_to(outside / "secret.txt")
    (docs / "inside-link.txt").symlink_to(docs / "note0.txt")  # inside: fine (a duplicate)
    (docs / "folder-link").symlink_to(outside, target_is_directory=True)
    (docs / "loop").symlink_to(docs, target_is_directory=True)
    idx = _indexer(colbert_checkpoint, tmp_path / "root")
    report = idx.index([docs])
    names = sorted(Path(p).name for p in report.indexed)  # the inside link and note0.txt: one is a duplicate
    assert len(names) == 2 and "note1.txt" in names and "secret-link.txt" not in names
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert "outside" in reasons["secret-link.txt"] and "follow_symlinks" in reasons["secret-link.txt"]
    assert "symlink" in reasons["folder-link"] and "symlink" in reasons["loop"]

    followed = _indexer(colbert_checkpoint, tmp_path / "root2").index([docs], follow_symlinks=True)
    names = sorted(Path(p).name for p in followed.indexed)
    assert "other.txt" in names  # through the folder link
    assert "secret-link.txt" in names or "secret.txt" in names  # the same file twice: one is a duplicate
    reasons = {Path(s.path).name: s.reason for s in followed.skipped}
    assert "loop" in reasons["loop"]


# --- 12: smaller ------------------------------------------------------------------------------


def test_ctrl_c_in_the_cli_says_the_index_is_intact(damaged, monkeypatch) -> None:
    idx, docs = damaged

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["colbert_modal.updates"], "apply_update", interrupted)
    monkeypatch.setattr(sys.modules["colbert_modal.sharding"], "apply_update", interrupted)
    (docs / "note9.txt").write_text("origami penguin\n", encoding="utf-8")
    result = _cli(["index", docs, "-n", "safe", "--index-root", idx.index_root])
    assert result.exit_code != 0
    assert "Aborted!" not in result.output
    assert "Error:" in result.output and "intact" in result.output


def test_cli_escapes_newlines_in_file_names(colbert_checkpoint: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "two\nlines.txt").write_text("zeppelin over the harbour\n", encoding="utf-8")
    root = tmp_path / "root"
    _indexer(colbert_checkpoint, root, name="nl").index([docs])
    for args in (["search", "zeppelin", "-n", "nl"], ["info", "nl"]):
        result = _cli([*args, "--index-root", root])
        _no_traceback(result)
        assert result.exit_code == 0, result.output
        assert "two\\nlines.txt" in result.output
        assert not any(line.startswith("lines.txt") for line in result.output.splitlines())


def test_mtime_only_change_is_recorded_so_the_next_run_does_not_hash(damaged, monkeypatch) -> None:
    idx, docs = damaged
    target = docs / "note0.txt"
    st = target.stat()
    os.utime(target, (st.st_atime, st.st_mtime + 100))
    first = idx.index([docs])
    assert not first.indexed
    manifest = json.loads((_gen_dir(idx) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["files"][str(target)]["mtime"] == target.stat().st_mtime
    hashed: list[Path] = []
    pipeline = sys.modules["colbert_modal.pipeline"]
    real = pipeline.hash_file
    monkeypatch.setattr(pipeline, "hash_file", lambda p: hashed.append(p) or real(p))
    assert not idx.index([docs]).indexed
    assert hashed == []
    assert isinstance(IndexStore(idx.index_root, "safe").current().manifest.files, dict)
