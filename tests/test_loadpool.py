"""Loader processes: a per-file time limit, and no worker outlives the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from colbert_modal import loadpool
from colbert_modal.errors import ConfigurationError
from colbert_modal.records import Document, SkippedFile
from helpers import read_or_hang

TESTS = Path(__file__).parent


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # orphaned and dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True


def test_a_file_that_hangs_its_loader_is_skipped_after_the_time_limit(
    colbert_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_MODAL_LOAD_TIMEOUT", "3")
    monkeypatch.setenv("LOADER_TEST_MARKERS", str(tmp_path))
    files = []
    for name in ("a-walrus.txt", "hang-forever.txt", "b-penguin.txt", "c-glacier.txt"):
        (tmp_path / name).write_text(f"A note: {name}.\n", encoding="utf-8")
        files.append(tmp_path / name)
    t0 = time.monotonic()
    out = loadpool.load_and_chunk(
        files, [None] * len(files), settings=(str(colbert_checkpoint), 32, 4), workers=2, max_chunks=10,
        reader=read_or_hang,
    )
    took = time.monotonic() - t0
    assert took < 120  # the hung reader sleeps 300 s
    skipped = [i for o in out for i in o.items if isinstance(i, SkippedFile)]
    assert [(Path(s.path).name, s.error) for s in skipped] == [("hang-forever.txt", "LoaderTimeout")]
    assert "more than 3 s" in skipped[0].reason and "COLBERT_MODAL_LOAD_TIMEOUT" in skipped[0].reason
    loaded = [Path(i.source).name for o in out for i in o.items if isinstance(i, Document)]
    assert loaded == ["a-walrus.txt", "b-penguin.txt", "c-glacier.txt"]  # in input order, the batch went on
    (hung,) = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert _gone(hung)  # killed, not left sleeping


def test_load_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loadpool.load_timeout() == loadpool.DEFAULT_LOAD_TIMEOUT == 600
    monkeypatch.setenv("COLBERT_MODAL_LOAD_TIMEOUT", "2.5")
    assert loadpool.load_timeout() == 2.5
    monkeypatch.setenv("COLBERT_MODAL_LOAD_TIMEOUT", "0")
    assert loadpool.load_timeout() is None  # no limit
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv("COLBERT_MODAL_LOAD_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match="COLBERT_MODAL_LOAD_TIMEOUT"):
            loadpool.load_timeout()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_loader_processes_die_with_their_parent(colbert_checkpoint: Path, tmp_path: Path, sig: signal.Signals) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    files = [docs / f"hang-{i}.txt" for i in range(2)]
    for f in files:
        f.write_text("a walrus\n", encoding="utf-8")
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from colbert_modal.loadpool import load_and_chunk
        from helpers import read_or_hang
        files = {[str(f) for f in files]!r}
        load_and_chunk(files, [None, None], settings=({str(colbert_checkpoint)!r}, 32, 4), workers=2, max_chunks=10,
                       reader=read_or_hang)
    """), encoding="utf-8")
    env = {**os.environ, "LOADER_TEST_MARKERS": str(markers)}
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = [int(p.name) for p in markers.iterdir()]
        assert len(workers) == 2, "the loader processes did not start reading"
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not all(map(_gone, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in workers if not _gone(pid)] == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # on failure: the loaders this test started, still sleeping
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
