"""The real modal client against the stand-in for Modal's API (tests/modal_standin).

Unlike test_modal_app.py, which calls the bodies through ``.local()``, these
tests go through the client's own machinery: ``app.run()``, object creation,
argument pickling and blob upload, ``.remote()``, class parameters and
``with_options``, deployed lookups, result and exception transport, and
Volume file transfers. The bodies still run in this process (in a thread of
the stand-in), on a tmp directory standing in for the Volume.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cloudpickle
import modal
import modal.exception
import pytest

from colbert_modal import modal_app
from colbert_modal.chunking import Chunker, load_tokenizer
from colbert_modal.errors import IndexLockedError, IndexNotFoundError
from colbert_modal.records import IndexInfo, IndexReport, SkippedFile
from colbert_modal.pipeline import Settings, UpdatePlan, plan_update
from colbert_modal.store import Manifest
from modal_standin import (  # noqa: F401 (fixture modal_standin)
    TIMEOUT,
    StandIn,
    reset_modal_client,
    standin_fixture,
    standin_server_fixture,
)

BLOB_THRESHOLD = 2 * 1024 * 1024  # modal._utils.blob_utils.MAX_OBJECT_SIZE_BYTES


def _plan(paths, ckpt: Path, name: str, manifest: Manifest | None = None) -> UpdatePlan:
    settings = Settings(str(ckpt), 256, 38)
    return plan_update(
        paths,
        name=name,
        settings=settings,
        manifest=manifest,
        chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=256, overlap=38),
    )


# A tiny app of this module's own, for a body that outlives its timeout.
slow_app = modal.App("standin-slow")
_release = threading.Event()


@slow_app.function(timeout=60)
def wait_for_release() -> str:
    _release.wait(10)
    return "released"


def test_app_run_and_manifest(modal_standin: StandIn) -> None:
    with modal.enable_output(), modal_app.app.run():
        assert modal_app.manifest.remote("papers") is None

    (call,) = modal_standin.calls
    assert (call.tag, call.status) == ("manifest", "SUCCESS")
    for rpc in (
        "AppCreate",
        "FunctionCreate",
        "ClassCreate",
        "AppPublish",
        "FunctionMap",
        "AppClientDisconnect",
    ):
        assert rpc in modal_standin.rpcs
    # The image and the mounts were "built" (never built for real).
    assert modal_standin.images


@pytest.mark.slow
def test_writer_apply_then_search(modal_standin: StandIn, colbert_checkpoint: Path, corpus_dir: Path) -> None:
    name = "papers"
    volume = modal_standin.volume_dir(modal_app.VOLUME_NAME)
    with modal_app.app.run():
        plan = _plan([corpus_dir], colbert_checkpoint, name)
        report = modal_app.Writer().apply.remote(plan, backend="exact")
        assert isinstance(report, IndexReport) and report.chunks_written > 0
        assert (volume / name / "CURRENT").read_text().strip() == "g000001"

        manifest = Manifest.from_json(modal_app.manifest.remote(name))
        assert manifest.generation == 1
        info = modal_app.info.remote(name)
        assert isinstance(info, IndexInfo) and info.documents == report.documents_total

        searcher = modal_app.Searcher(index_name=name)
        hits = searcher.search_batch.remote(["penguin quartz rhubarb"], k=3)
        assert hits[0][0].source.endswith("bestiary.pdf")
        assert searcher.generation.remote() == 1

        # with_options: a variant with its own GPU, the same code.
        big = modal_app.Searcher.with_options(gpu="H100")(index_name=name)
        hits = big.search_batch.remote(["flamingo glacier"], k=1)
        assert hits[0][0].source.endswith("atlas.pdf")

    searches = modal_standin.calls_of("Searcher.search_batch")
    assert [c.params for c in searches] == [{"index_name": name, "shard": ""}] * 2  # the whole index
    assert searches[0].gpus == modal_app.SEARCH_GPU and searches[0].options is None
    assert searches[1].gpus == ["H100"]
    assert searches[1].options.resources.gpu_config.gpu_type == "H100"
    assert modal_standin.calls_of("Writer.apply")[0].gpus == modal_app.GPU


@pytest.mark.slow
def test_plan_over_2mib_travels_as_blob(modal_standin: StandIn, colbert_checkpoint: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Penguins\n\nA penguin on the glacier.\n", encoding="utf-8")
    plan = _plan([docs], colbert_checkpoint, "big")
    # A folder with many files the loaders skip: plain data, but a plan over 2 MiB.
    plan.skipped.extend(
        SkippedFile(
            path=f"/data/archive/{i:06d}-{'x' * 200}.bin",
            reason="unsupported file type",
            error="UnsupportedFileError",
        )
        for i in range(10_000)
    )
    assert len(cloudpickle.dumps(plan)) > BLOB_THRESHOLD

    with modal_app.app.run():
        report = modal_app.Writer().apply.remote(plan, backend="exact")

    assert report.chunks_written > 0 and len(report.skipped) == 10_000
    (call,) = modal_standin.calls_of("Writer.apply")
    assert call.args_from_blob  # the client uploaded the argument as a blob
    assert modal_standin.blob_outputs  # and the report (also > 2 MiB) came back as one


def test_exception_in_body_arrives_as_its_type(modal_standin: StandIn) -> None:
    with modal_app.app.run():
        with pytest.raises(IndexNotFoundError):
            modal_app.info.remote("missing")
        modal_standin.inject("Writer.apply", IndexLockedError("held by another writer"))
        with pytest.raises(IndexLockedError, match="held by another writer"):
            modal_app.Writer().apply.remote(None)
    assert [c.status for c in modal_standin.calls] == ["FAILURE", "FAILURE"]


def test_function_timeout(modal_standin: StandIn) -> None:
    with modal_app.app.run():
        modal_standin.inject("Writer.apply", TIMEOUT)
        with pytest.raises(modal.exception.FunctionTimeoutError) as info:
            modal_app.Writer().apply.remote(None)
    # It subclasses modal's TimeoutError, not the builtin one.
    assert isinstance(info.value, modal.exception.TimeoutError)
    assert not isinstance(info.value, TimeoutError)

    # A body that really runs past its (overridden) timeout.
    _release.clear()
    modal_standin.timeouts["wait_for_release"] = 0.3
    try:
        with (
            slow_app.run(),
            pytest.raises(modal.exception.FunctionTimeoutError, match="timed out"),
        ):
            wait_for_release.remote()
    finally:
        _release.set()
    assert [c.status for c in modal_standin.calls] == ["TIMEOUT", "TIMEOUT"]


def test_lookup_of_app_never_deployed(modal_standin: StandIn) -> None:
    writer_cls = modal.Cls.from_name(modal_app.APP_NAME, "Writer")
    with pytest.raises(modal.exception.NotFoundError, match="Lookup failed for Cls 'Writer'"):
        writer_cls().apply.remote(None)
    with pytest.raises(modal.exception.NotFoundError, match="Lookup failed for Function 'manifest'"):
        modal.Function.from_name(modal_app.APP_NAME, "manifest").remote("papers")


def test_deployed_lookup(modal_standin: StandIn) -> None:
    modal_app.app.deploy()
    assert modal.Function.from_name(modal_app.APP_NAME, "manifest").remote("papers") is None
    searcher_cls = modal.Cls.from_name(modal_app.APP_NAME, "Searcher")
    with pytest.raises(IndexNotFoundError):
        searcher_cls(index_name="papers").search_batch.remote(["penguin"])
    assert modal_standin.calls_of("Searcher.search_batch")[0].params == {"index_name": "papers", "shard": ""}


def test_app_cannot_run_twice_at_once(modal_standin: StandIn) -> None:
    # The client refuses a second run of the same App object while one is open:
    # the library must share one running app between its sessions.
    with modal_app.app.run():
        with (
            pytest.raises(modal.exception.InvalidError, match="App is already running"),
            modal_app.app.run(),
        ):
            pass  # pragma: no cover
        # The refused run reset the app's load context first (runner.py), yet the
        # first run is unharmed: calls, and a class variant bound only now, work.
        assert modal_app.manifest.remote("papers") is None
        modal_standin.inject("Writer.apply", IndexLockedError("busy"))
        with pytest.raises(IndexLockedError):
            modal_app.Writer().apply.remote(None)
    with modal_app.app.run():  # and after it closes, the app runs again
        assert modal_app.manifest.remote("papers") is None
    assert len([r for r in modal_standin.rpcs if r == "AppCreate"]) == 2


def test_volume_read_listdir_batch_upload(modal_standin: StandIn, tmp_path: Path) -> None:
    volume_dir = modal_standin.volume_dir(modal_app.VOLUME_NAME)
    local = tmp_path / "upload"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_bytes(b"alpha\n")
    (local / "sub" / "b.txt").write_bytes(b"beta\n")
    big = bytes(range(256)) * (9 * 4096 + 7)  # a little over 9 MiB: two Volume blocks
    (local / "big.bin").write_bytes(big)

    vol = modal.Volume.from_name(modal_app.VOLUME_NAME)
    with vol.batch_upload() as batch:
        batch.put_directory(local, "/papers/upload")
        batch.put_file(local / "a.txt", "/papers/top.txt")
    assert (volume_dir / "papers" / "upload" / "sub" / "b.txt").read_bytes() == b"beta\n"

    names = sorted(e.path for e in vol.listdir("/papers"))
    assert names == ["papers/top.txt", "papers/upload"]
    deep = sorted(e.path for e in vol.listdir("/papers", recursive=True) if e.type == modal.volume.FileEntryType.FILE)
    assert deep == [
        "papers/top.txt",
        "papers/upload/a.txt",
        "papers/upload/big.bin",
        "papers/upload/sub/b.txt",
    ]

    assert b"".join(vol.read_file("papers/top.txt")) == b"alpha\n"
    assert b"".join(vol.read_file("papers/upload/big.bin")) == big
    # A file written "in a container" (straight into the directory) is visible too.
    (volume_dir / "papers" / "CURRENT").write_text("g000001\n")
    assert b"".join(vol.read_file("/papers/CURRENT")) == b"g000001\n"

    with pytest.raises(FileNotFoundError):
        b"".join(vol.read_file("papers/nothing-here"))
    with pytest.raises(FileExistsError), vol.batch_upload() as batch:
        batch.put_file(local / "a.txt", "/papers/top.txt")
    with vol.batch_upload(force=True) as batch:
        batch.put_file(local / "sub" / "b.txt", "/papers/top.txt")
    assert b"".join(vol.read_file("papers/top.txt")) == b"beta\n"

    with pytest.raises(modal.exception.NotFoundError):
        modal.Volume.from_name("no-such-volume").listdir("/")


def test_comma_separated_server_url_falls_over(modal_standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    # Like the client's default ("https://api.modal.com,https://api.modal2.com"):
    # the client races the hosts; a refused first one falls over to the next.
    monkeypatch.setenv("MODAL_SERVER_URL", f"http://127.0.0.1:1,{modal_standin.url}")
    reset_modal_client()
    assert modal.Volume.from_name(modal_app.VOLUME_NAME).listdir("/") == []


def test_wrong_token_is_refused(modal_standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "wrong")
    reset_modal_client()
    with pytest.raises(modal.exception.AuthError):
        modal.Volume.from_name(modal_app.VOLUME_NAME).listdir("/")
