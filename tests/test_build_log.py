"""A first remote run builds the images: Modal's build log, summarised on the "connecting to Modal" stage.

Through the real modal client and the stand-in (``StandIn.build_images()``
makes every image not built yet build, its log streamed by
``ImageJoinStreaming`` as Modal's server streams it). Watched, the stage's
notes name the image and its step, and the stage logs one INFO line; not
watched, nothing shows; a failed build is our ``RemoteError`` naming the
image, the step and the log's last lines.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer, modal_app
from colbert_modal.errors import RemoteError
from colbert_modal.progress import Progress, StageEnded, StageNoted
from colbert_modal.remote import build_log
from colbert_modal.remote import client as remote_client
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixtures)
from test_progress import FakeTTY
from test_standin_remote import HUB_ID, HubModel, hub_model  # noqa: F401 (fixture hub_model)

FAILURE = [
    "error: No solution found when resolving dependencies:",
    "  Because there is no version of torch==9.9.9 and you require torch==9.9.9, we can conclude ...",
]


@pytest.fixture
def standin(
    modal_standin: StandIn, hub_model: HubModel, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (the fixture)
) -> Iterator[StandIn]:
    hub_model.apply(monkeypatch)
    yield modal_standin
    assert not remote_client.APP_RUN.running, "a test left the shared app run open"


def _remote(tmp_path: Path, **kwargs) -> ColbertIndexer:
    return ColbertIndexer(
        "papers", mode="remote", index_root=tmp_path / "local", backend="exact", model=HUB_ID, **kwargs
    )


def _stage_lines(caplog: pytest.LogCaptureFixture) -> Counter:
    return Counter(r.getMessage().split(":")[0] for r in caplog.records if r.name == "colbert_modal.progress")


def test_the_hook_exists_in_the_pinned_modal() -> None:
    """The build log reaches the current output manager; if this fails, modal moved the hook (see build_log)."""
    import modal._image

    assert build_log.hook_missing() is None
    source = inspect.getsource(modal._image._image_await_build_result)
    assert "OutputManager.get()" in source and "put_streaming_log" in source and "flush_lines" in source


def test_a_modal_whose_image_build_stops_calling_the_hook_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names alone are not enough: the image build must still hand its log to the output manager."""
    import modal._image

    real = inspect.getsource(modal._image)
    moved = real.replace(".put_streaming_log(", ".stream_log_elsewhere(")
    monkeypatch.setattr(inspect, "getsource", lambda obj: moved if obj is modal._image else real)
    assert build_log.hook_missing() == "modal's image build (modal._image) no longer calls put_streaming_log"


def test_build_log_reads_chunks_cut_anywhere_and_interleaved() -> None:
    events: list = []
    progress = Progress(False, sink=events.append)
    stage = progress.stage("connecting to Modal", unit="step")
    log = build_log.BuildLog(stage, [("client image", ("client.lock",)), ("GPU image", ("apt-get",))])
    gpu = "Building image im-gpu1\n\n=> Step 0: FROM base\n=> Step 1: RUN apt-get install -y git\nGet:1 http://x\r50%\r"
    cpu = "Building image im-cpu1\n=> Step 0: FROM base\n=> Step 1: COPY /.0_client.lock /.uv/0/client.lock\n"
    for i in range(0, max(len(gpu), len(cpu)), 7):  # two builds, interleaved, cut every 7 characters
        log.feed("a", gpu[i : i + 7])
        log.feed("b", cpu[i : i + 7])
    log.feed("b", "Saving image...\nBuilt image im-cp")
    log.feed("a", "Saving image...\nImage saved, took 1.2s\n\nBuilt image im-gpu1 in 84.2s\n")
    log.flush("a")  # a's stream ended (Modal flushes after each build): b's cut line waits for its end
    assert log.summary() == "built 1 image layer (GPU image 1)"
    unfinished = log.find("im-none")
    assert unfinished is not None and unfinished.image_id == "im-cpu1" and unfinished.lines[-1] == "Saving image..."
    log.feed("b", "u1 in 2.5s\n")
    log.flush()
    notes = [e.text for e in events if isinstance(e, StageNoted)]
    assert "GPU image im-gpu1, step 1: RUN apt-get install -y git" in notes
    assert "client image im-cpu1, step 1: COPY /.0_client.lock /.uv/0/client.lock" in notes
    assert notes[-2:] == ["built GPU image im-gpu1 in 84 s", "built client image im-cpu1 in 2.5 s"]
    assert log.summary() == "built 2 image layers (GPU image 1, client image 1)"
    assert len(log.find("im-gpu1").lines) == build_log.LAST_LINES  # the tail only


@pytest.mark.slow
def test_first_remote_index_shows_the_build_while_connecting(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a terminal (progress decided from the environment): the first call starts the run and shows the build."""
    standin.build_images()
    monkeypatch.delenv("CI", raising=False)
    terminal = FakeTTY()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level(logging.INFO)
    with _remote(tmp_path) as idx:
        report = idx.index(corpus_dir)
    assert report.chunks_written > 0
    assert len(standin.builds.played) >= 8 and not standin.builds.failed  # both images, layer by layer
    err = terminal.getvalue()  # tqdm's text bars: the notes as they came, in place
    assert "connecting to Modal" in err
    assert "GPU image im-" in err and "client image im-" in err and ", step 1: " in err
    assert f"/{modal_app.IMAGE_LOCK.name}" in err and "built " in err
    stages = _stage_lines(caplog)
    assert list(stages) == [
        "connecting to Modal",  # the manifest read starts the run: the images build here
        "discovering", "loading", "chunking", "starting the container", "encoding", "publishing", "committing",
    ]
    assert set(stages.values()) == {1}  # one INFO line per stage, however many build lines
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connecting to Modal")]
    assert f"built {len(standin.builds.played)} image layers (" in line and "GPU image" in line
    assert not any("=> Step" in r.getMessage() for r in caplog.records)  # no log line per build line


@pytest.mark.slow
def test_not_watched_shows_nothing(
    standin: StandIn, corpus_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    standin.build_images()
    caplog.set_level(logging.WARNING)
    with _remote(tmp_path, progress=False) as idx:
        assert idx.index(corpus_dir).chunks_written > 0
    assert standin.builds.played and not standin.builds.failed
    assert capsys.readouterr() == ("", "")
    assert not caplog.records


def test_start_shows_the_build_and_stays_quiet_when_built(standin: StandIn) -> None:
    standin.build_images()
    events: list = []
    session = remote_client.RemoteSession("ephemeral")
    try:
        session.start(Progress(True, sink=events.append))
    finally:
        session.close()
    notes = [e.text for e in events if isinstance(e, StageNoted) and e.stage == "connecting to Modal"]
    assert notes[0] == "a first run builds the images (minutes)"
    assert any(", step " in n for n in notes) and notes[-1].startswith("built ")
    assert events[-1] == StageEnded("connecting to Modal")

    events.clear()  # nothing to build (the stand-in's default): one note says so
    standin.builds.enabled = False
    session = remote_client.RemoteSession("ephemeral")
    try:
        session.start(Progress(True, sink=events.append))
    finally:
        session.close()
    assert [e.text for e in events if isinstance(e, StageNoted)][-1] == "images already built"


@pytest.mark.parametrize("watched", [True, False])
def test_failed_build_names_the_image_and_the_step(
    standin: StandIn, tmp_path: Path, watched: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    standin.build_images(fail_on=modal_app.CLIENT_IMAGE_LOCK.name, failure=FAILURE)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Penguins\n\nA penguin on the glacier.\n", encoding="utf-8")
    with _remote(tmp_path, progress=watched) as idx, pytest.raises(RemoteError) as info:
        idx.index(docs)
    message = str(info.value)
    assert standin.builds.failed
    assert message.startswith("starting the Modal app: building the client image im-")
    assert re.search(rf"failed at step \d+: COPY /\.0_{re.escape(modal_app.CLIENT_IMAGE_LOCK.name)} ", message)
    assert FAILURE[0] in message and "modal image logs im-" in message
    assert type(info.value.__cause__).__name__ == "ImageBuildError"
    assert not remote_client.APP_RUN.running
    assert capsys.readouterr().out == ""
