"""Where progress shows (terminal, Jupyter, piped, CI), the stages of local and remote work, one log line each."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.progress import (
    Progress,
    StageAdvanced,
    StageEnded,
    StageStarted,
    bar_kind,
    in_notebook,
    should_show,
)
from colbert_modal.remote import ApplyFinished


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


def fake_kernel(monkeypatch: pytest.MonkeyPatch, *, by: str = "class") -> None:
    """A simulated Jupyter kernel: ``IPython.get_ipython()`` returns a ZMQ shell (or one whose config names the kernel app)."""
    shell_cls = type("ZMQInteractiveShell" if by == "class" else "SomeShell", (), {})
    shell = shell_cls()
    shell.config = {"IPKernelApp": {}} if by == "config" else {}
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_terminal_shows_text_bars(no_ci: None) -> None:
    assert should_show(None, FakeTTY()) and bar_kind(None, FakeTTY()) == "text"
    master, slave = os.openpty()  # a real terminal device
    with os.fdopen(slave, "w") as tty:
        assert should_show(None, tty)
    os.close(master)


def test_piped_shows_nothing(no_ci: None) -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        assert not should_show(None, pipe)
    os.close(read)
    assert not should_show(None, io.StringIO()) and bar_kind(None, io.StringIO()) is None
    assert not in_notebook()


def test_ci_shows_nothing_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not should_show(None, FakeTTY())
    fake_kernel(monkeypatch)
    assert not should_show(None, io.StringIO())


@pytest.mark.parametrize("by", ["class", "config"])
def test_jupyter_kernel_shows_the_notebook_widget(no_ci: None, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    fake_kernel(monkeypatch, by=by)
    assert in_notebook()
    assert should_show(None, io.StringIO())  # a kernel's stderr is never a TTY
    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    assert bar_kind(None, io.StringIO()) == "notebook"
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # widgets missing: tqdm's text bar
    assert bar_kind(None, io.StringIO()) == "text"


def test_argument_overrides(no_ci: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bar_kind(True, io.StringIO()) == "text"
    assert bar_kind(False, FakeTTY()) is None
    fake_kernel(monkeypatch)
    assert not should_show(False)


def test_stages_count_log_once_and_travel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="colbert_modal.progress")
    events: list = []
    progress = Progress(True, sink=events.append)
    with progress.stage("encoding", total=5, unit="chunk") as stage:
        for _ in range(5):
            stage.update(1)
        stage.note("in bf16")
    spinner = progress.stage("PLAID training", unit="step")
    spinner.close()
    spinner.close()  # idempotent: still one line
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["encoding", "PLAID training"]
    assert "5 chunks" in caplog.records[0].getMessage()
    assert events[0] == StageStarted("encoding", 5, "chunk") and events[-1] == StageEnded("PLAID training")

    caplog.clear()
    client = Progress(False)  # the client replays a container's events
    for event in events:
        client.replay(event)
    assert client.done == ["encoding", "PLAID training"]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["encoding", "PLAID training"]


def stage_lines(caplog: pytest.LogCaptureFixture) -> Counter:
    return Counter(r.getMessage().split(":")[0] for r in caplog.records if r.name == "colbert_modal.progress")


@pytest.mark.slow
def test_local_index_stages(
    no_ci: None, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    idx = ColbertIndexer("bars", model=colbert_checkpoint, index_root=tmp_path, progress=True)
    idx.index(corpus_dir)
    stages = stage_lines(caplog)
    assert list(stages) == ["discovering", "loading", "chunking", "encoding", "publishing"]
    assert set(stages.values()) == {1}  # one INFO line per stage, however many batches
    err = capsys.readouterr().err
    assert "loading" in err and "file/s" in err and "chunk/s" in err  # tqdm's text bars, in their units

    caplog.clear()
    piped = ColbertIndexer("piped", model=colbert_checkpoint, index_root=tmp_path)  # stderr is captured: no TTY
    piped.index(corpus_dir)
    assert capsys.readouterr().err == ""
    assert set(stage_lines(caplog).values()) == {1}


@pytest.mark.slow
def test_plaid_build_stages(colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    idx = ColbertIndexer("plaid", model=colbert_checkpoint, index_root=tmp_path, backend="plaid", progress=False)
    idx.index(corpus_dir)
    stages = stage_lines(caplog)
    assert [s for s in stages if s not in ("discovering", "loading", "chunking")] == [
        "encoding", "PLAID training", "PLAID compression", "publishing"
    ]
    assert set(stages.values()) == {1}


@pytest.mark.slow
def test_remote_stages_stream_from_the_container(
    monkeypatch: pytest.MonkeyPatch, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through ``.local()`` (the ``inprocess`` session): the real Writer generator, replayed on the client."""
    from colbert_modal import modal_app
    from colbert_modal.remote.server import STARTED

    volume = tmp_path / "volume"
    volume.mkdir()
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "inprocess")
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(volume))
    docs = tmp_path / "docs"
    shutil.copytree(corpus_dir, docs)
    caplog.set_level(logging.INFO)
    with ColbertIndexer("remote", model=colbert_checkpoint, mode="remote", index_root=tmp_path / "l", progress=False) as idx:
        report = idx.index(docs)
        assert report.chunks_total > 0
        stages = stage_lines(caplog)
        assert list(stages) == [
            "discovering", "loading", "chunking",  # planned here
            "connecting to Modal", "starting the container",  # the client's own
            "encoding", "publishing",  # streamed from the container (no Volume commit in a .local() body)
        ]
        assert set(stages.values()) == {1}

        (docs / "extra.txt").write_text("quantum kernel gpu modal vector\n", encoding="utf-8")
        plan = idx._plan([str(docs)], idx._remote_runner().session.manifest("remote"), passwords=None, rebuild=False,
                         keep_missing=False, progress=Progress(False))
        items = list(modal_app.Writer().apply_stream.local(plan, backend="exact"))
    assert items[0] == STARTED and isinstance(items[-1], ApplyFinished) and items[-1].report.chunks_written == 1
    updates = [e for e in items if isinstance(e, StageAdvanced) and e.stage == "encoding"]
    assert sum(e.n for e in updates) == 1
    assert StageStarted("committing", None, "step") not in items  # a container's commit: see test_standin_remote
