"""``ColbertIndexer(mode="remote")`` end to end through the real modal client and the stand-in.

Where tests/test_standin.py drives modal_app by hand, these go through the
library as a user does: the session opens the shared app run, looks up
deployed classes, maps Modal's exceptions to ours and reads the Volume with
``modal.Volume.from_name`` (tests/modal_standin answers on loopback; the
bodies run in this process).

The model is a hub id, as remote mode requires, that resolves offline on
both sides: the container side finds it baked under
``$COLBERT_MODAL_MODELS_DIR/<hub id>`` (as in the image), this side in a
Hugging Face cache of the test's own (the tiny test checkpoint under both).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import huggingface_hub.constants
import pytest

from colbert_modal import ColbertIndexer, modal_app
from colbert_modal.remote import server
from colbert_modal.errors import (
    ConfigurationError,
    IndexLockedError,
    IndexNotFoundError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    ShardBuildError,
)
from colbert_modal.remote import client as remote_client
from helpers import assert_same_results
from modal_standin import (  # noqa: F401 (fixture modal_standin)
    TIMEOUT,
    StandIn,
    standin_fixture,
    standin_server_fixture,
)

HUB_ID = "standin-org/tiny-colbert"
REVISION = "0" * 40
BLOB_THRESHOLD = 2 * 1024 * 1024  # modal._utils.blob_utils.MAX_OBJECT_SIZE_BYTES


class HubModel:
    """The tiny checkpoint as a baked model dir and as an offline HF cache entry."""

    def __init__(self, base: Path, checkpoint: Path) -> None:
        self.models_dir = base / "models"
        shutil.copytree(checkpoint, self.models_dir / HUB_ID)
        self.hf_cache = base / "hf-cache"
        repo = self.hf_cache / ("models--" + HUB_ID.replace("/", "--"))
        shutil.copytree(checkpoint, repo / "snapshots" / REVISION)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REVISION, encoding="utf-8")

    def apply(self, mp: pytest.MonkeyPatch) -> None:
        mp.setenv("COLBERT_MODAL_MODELS_DIR", str(self.models_dir))
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(self.hf_cache))


@pytest.fixture(scope="module")
def hub_model(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path) -> HubModel:
    return HubModel(tmp_path_factory.mktemp("hub-model"), colbert_checkpoint)


@pytest.fixture(scope="module")
def papers_index(tmp_path_factory: pytest.TempPathFactory, hub_model: HubModel, corpus_dir: Path) -> Path:
    """An exact index 'papers' of the corpus built with the hub id; copied onto the Volume by tests."""
    root = tmp_path_factory.mktemp("papers-root")
    with pytest.MonkeyPatch.context() as mp:
        hub_model.apply(mp)
        ColbertIndexer("papers", model=HUB_ID, index_root=root, backend="exact", progress=False).index([corpus_dir])
    return root / "papers"


@pytest.fixture
def standin(modal_standin: StandIn, hub_model: HubModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    hub_model.apply(monkeypatch)
    yield modal_standin
    assert not remote_client.APP_RUN.running, "a test left the shared app run open"


def _volume(standin: StandIn) -> Path:
    return standin.volume_dir(modal_app.VOLUME_NAME)


def _put_papers(standin: StandIn, papers_index: Path) -> None:
    shutil.copytree(papers_index, _volume(standin) / "papers")


def _remote(tmp_path: Path, name: str = "papers", **kwargs) -> ColbertIndexer:
    kwargs.setdefault("backend", "exact")
    return ColbertIndexer(name, mode="remote", index_root=tmp_path / "local", progress=False, **kwargs)


def _app_creates(standin: StandIn) -> int:
    return standin.rpcs.count("AppCreate")


@pytest.mark.slow
@pytest.mark.parametrize("volume_version", [2, 1])
def test_index_search_info_pull_push(standin: StandIn, corpus_dir: Path, tmp_path: Path, volume_version: int) -> None:
    standin.volume_version = volume_version  # a Volume made before VolumeFS v2 (or without version=2) is v1
    with _remote(tmp_path, model=HUB_ID) as idx:
        report = idx.index(corpus_dir)
        assert report.chunks_written > 0 and report.documents_total >= 5
        assert (_volume(standin) / "papers" / "CURRENT").read_text().strip() == "g000001"
        assert idx.search("penguin quartz rhubarb", k=3)[0].source.endswith("bestiary.pdf")
        info = idx.info()
        assert (info.generation, info.model, info.documents) == (1, HUB_ID, report.documents_total)
        assert idx.index(corpus_dir).chunks_written == 0  # planned against the remote manifest: nothing new

        before = len(standin.rpcs)
        path = idx.pull()
        pull_rpcs = standin.rpcs[before:]
        assert "VolumeGetFile2" in pull_rpcs and ("VolumeListFiles2" if volume_version == 2 else "VolumeListFiles") in pull_rpcs
        assert not {"AppCreate", "FunctionMap"} & set(pull_rpcs)  # no app run, no container, for reading files
        assert idx.search.local("flamingo glacier", k=1)[0].source.endswith("atlas.pdf")
        assert path == tmp_path / "local" / "papers"

        idx.push()  # the pulled index goes back up as the next generation
        assert idx.info().generation == 2
        assert idx.search("meteor shower harbour", k=1)[0].source.endswith("meteor.md")
    assert _app_creates(standin) == 1
    assert [c.tag for c in standin.calls].count("Writer.adopt") == 1
    assert ("VolumePutFiles2" if volume_version == 2 else "VolumePutFiles") in standin.rpcs
    # the containers took the write lease in the Dict, as on Modal, and gave it back
    assert {"DictUpdate", "DictPop"} <= set(standin.rpcs) and standin.dict_items(modal_app.LEASES_NAME) == {}


def test_a_lease_held_in_the_dict_by_another_app_refuses_the_write(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    import modal

    held = {"token": "t", "owner": "app ap-other, container ta-1", "expires": 4e9}
    assert modal.Dict.from_name(modal_app.LEASES_NAME, create_if_missing=True).put("papers", held, skip_if_exists=True)
    with _remote(tmp_path, model=HUB_ID) as idx, pytest.raises(IndexLockedError, match=r"app ap-other, container ta-1"):
        idx.index(corpus_dir)
    assert standin.dict_items(modal_app.LEASES_NAME) == {"papers": held}
    assert not (_volume(standin) / "papers").exists()


@pytest.mark.slow
def test_remote_progress_streams_through_the_modal_client(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress watched (INFO log): ``Writer.apply_stream.remote_gen()``, the container's stages arriving as items."""
    caplog.set_level(logging.INFO, logger="colbert_modal.progress")
    with _remote(tmp_path, model=HUB_ID) as idx:
        report = idx.index(corpus_dir)
    assert report.chunks_written > 0
    stages = Counter(r.getMessage().split(":")[0] for r in caplog.records if r.name == "colbert_modal.progress")
    assert list(stages) == [
        "connecting to Modal",  # the manifest read starts the app run (a first run builds the images here)
        "discovering", "loading", "chunking",  # planned here
        "starting the container",  # the client's own
        "encoding", "publishing", "committing",  # streamed from the container
    ]
    assert set(stages.values()) == {1}
    assert [c.tag for c in standin.calls if c.tag.startswith("Writer.")] == ["Writer.apply_stream"]
    (call,) = standin.calls_of("Writer.apply_stream")
    assert call.status == "SUCCESS" and len(call.chunks) >= 5  # started, encoding..., publishing, committing, result
    assert "FunctionCallGetDataOut" in standin.rpcs
    assert (_volume(standin) / "papers" / "CURRENT").read_text().strip() == "g000001"


def test_pull_alone_starts_no_app(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    _put_papers(standin, papers_index)
    with _remote(tmp_path) as idx:
        idx.pull()
        assert idx.info.local().documents > 0
    assert "AppCreate" not in standin.rpcs and not standin.calls


def test_two_indexers_share_one_app_run(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    _put_papers(standin, papers_index)
    a, b = _remote(tmp_path / "a"), _remote(tmp_path / "b")
    assert a.info().documents > 0  # opens the run
    assert b.search("penguin", k=1)[0].source.endswith("bestiary.pdf")  # joins it
    a.close()  # b still holds the run
    assert b.search("flamingo", k=1)[0].source.endswith("atlas.pdf")
    assert _app_creates(standin) == 1 and not standin.disconnects
    b.close()  # the last one stops it
    assert len(standin.disconnects) == 1

    with _remote(tmp_path / "c") as c:  # one after another: a new run
        assert c.info().documents > 0
    assert _app_creates(standin) == 2

    results: dict[str, object] = {}

    def search(who: str, query: str) -> None:
        with _remote(tmp_path / who) as idx:
            try:
                results[who] = idx.search(query, k=1)[0].source
            except Exception as exc:  # reported below
                results[who] = exc

    threads = [threading.Thread(target=search, args=(w, q)) for w, q in (("t1", "penguin"), ("t2", "flamingo"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert str(results["t1"]).endswith("bestiary.pdf") and str(results["t2"]).endswith("atlas.pdf"), results
    assert _app_creates(standin) in (3, 4)  # one shared run, unless one thread finished before the other began


@pytest.mark.slow
def test_update_plan_over_2mib_travels_as_blob(standin: StandIn, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Penguins\n\nA penguin on the glacier.\n", encoding="utf-8")
    for i in range(7000):  # files the loaders skip: each a line of the report, together over 2 MiB
        (docs / f"{i:05d}-{'x' * 200}.bin").touch()
    with _remote(tmp_path, "big", model=HUB_ID) as idx:
        report = idx.index(docs)
    assert report.chunks_written > 0 and len(report.skipped) == 7000
    (call,) = standin.calls_of("Writer.apply")
    assert call.args_from_blob  # the plan went as a blob
    assert len(cloudpickle.dumps(report)) > BLOB_THRESHOLD and standin.blob_outputs  # and the report came back as one


def test_errors_in_the_container_arrive_as_ours(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    with _remote(tmp_path, "missing") as idx:
        with pytest.raises(IndexNotFoundError):
            idx.info()
        with pytest.raises(IndexNotFoundError):
            idx.search("penguin")
    _put_papers(standin, papers_index)
    with _remote(tmp_path) as idx:
        standin.inject("Writer.apply", IndexLockedError("index 'papers' is being written by another writer"))
        with pytest.raises(IndexLockedError, match="another writer"):
            idx.delete(["/nowhere/atlas.pdf"])
        standin.inject("Writer.apply", MemoryError("container ran out of memory"))
        with pytest.raises(RemoteError, match=r"failed on Modal.*MemoryError") as info:
            idx.delete(["/nowhere/atlas.pdf"])
        assert isinstance(info.value.__cause__, MemoryError)


def test_app_never_deployed_says_to_deploy(standin: StandIn, tmp_path: Path) -> None:
    with _remote(tmp_path, remote_app="deployed") as idx:
        with pytest.raises(RemoteUnavailableError, match="colbert-modal deploy"):
            idx.info()
        with pytest.raises(RemoteUnavailableError, match="colbert-modal deploy"):
            idx.search("penguin")
    assert "AppCreate" not in standin.rpcs


def test_deployed_app_is_used_without_a_run(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    _put_papers(standin, papers_index)
    modal_app.app.deploy()
    creates = _app_creates(standin)
    with _remote(tmp_path, remote_app="deployed") as idx:
        assert idx.search("penguin", k=1)[0].source.endswith("bestiary.pdf")
    assert _app_creates(standin) == creates


def test_function_timeout_names_the_limit(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    _put_papers(standin, papers_index)
    with _remote(tmp_path, remote_timeout=123) as idx:
        standin.inject("Writer.apply", TIMEOUT)
        with pytest.raises(RemoteTimeoutError, match="123 s") as info:
            idx.delete(["/nowhere/atlas.pdf"])
    assert "remote_timeout" in str(info.value)
    (call,) = standin.calls_of("Writer.apply")
    assert call.status == "TIMEOUT" and call.options.timeout_secs == 123  # the limit reached with_options
    with _remote(tmp_path) as idx:  # no remote_timeout: the app's limit, no override
        standin.inject("Writer.apply", TIMEOUT)
        with pytest.raises(RemoteTimeoutError, match=f"{modal_app.WRITER_TIMEOUT} s"):
            idx.delete(["/nowhere/atlas.pdf"])
    assert standin.calls_of("Writer.apply")[1].options is None


def test_per_indexer_gpu_takes_what_the_app_setting_takes(
    standin: StandIn, papers_index: Path, tmp_path: Path
) -> None:
    _put_papers(standin, papers_index)
    with _remote(tmp_path, gpu=" a100 ") as idx:
        idx.search("penguin")
    with _remote(tmp_path, gpu=",".join(modal_app.DEFAULT_GPUS)) as idx:  # the app's own fallback list
        idx.search("penguin")
    first, second = standin.calls_of("Searcher.search_batch")
    assert first.gpus == ["A100"] and first.options.resources.gpu_config.gpu_type == "A100"
    assert second.gpus == modal_app.SEARCH_GPU and second.options is None
    for gpu in ("cpu", "H100,A100"):  # with_options can neither remove a GPU nor take a list
        with _remote(tmp_path, gpu=gpu) as idx, pytest.raises(ConfigurationError, match="COLBERT_MODAL_GPU"):
            idx.search("penguin")


# --- sharded indexes (issue 16) ---------------------------------------------------------------

SHARD_QUERIES = ["penguin quartz walrus", "meteor glacier harbour", "aardvark bicycle", "hello font letters"]


def _hits(results) -> list[list[tuple[str, float]]]:
    return [[(r.chunk_id, round(r.score, 3)) for r in res] for res in results]


@pytest.mark.slow
def test_sharded_index_builds_in_parallel_containers_and_searches_each_shard(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Coordinator -> ShardWriter.build.map (from inside its body), then one Searcher per shard, merged:
    the unsharded index's results (exact backend), through the real modal client."""
    reference = ColbertIndexer("ref", model=HUB_ID, index_root=tmp_path / "ref", backend="exact", progress=False)
    reference.index([corpus_dir])
    caplog.set_level(logging.INFO, logger="colbert_modal.progress")
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=3, gpu="H100", remote_timeout=900) as idx:
        report = idx.index([corpus_dir])
        assert report.chunks_total == reference.info().chunks
        builds = standin.calls_of("ShardWriter.build")
        (coordinator,) = standin.calls_of("Coordinator.apply_stream")  # a CPU container coordinates
        assert not standin.calls_of("Writer.*")
        assert sorted(c.args[0].shard for c in builds) == ["s000", "s001", "s002"]
        assert len({c.call_id for c in builds}) == 1  # one .map() over the shards
        assert coordinator.status == "SUCCESS" and not coordinator.gpus
        assert coordinator.options.timeout_secs == server.coordinator_timeout(3, 900, modal_app.MAX_GPUS)
        assert len({c.container for c in builds}) == 3  # each shard in a container of its own
        for call in builds:  # the indexer's GPU and timeout reach the shard containers
            assert call.gpus == ["H100"] and call.options.timeout_secs == 900
        stages = [r.getMessage() for r in caplog.records if r.name == "colbert_modal.progress"]
        assert any(m.startswith("building shards") and "3" in m for m in stages), stages

        assert_same_results(reference.search_batch(SHARD_QUERIES, k=5), idx.search_batch(SHARD_QUERIES, k=5))
        searches = standin.calls_of("Searcher.search_shard")
        assert sorted(c.params.get("shard") for c in searches) == ["s000", "s001", "s002"]
        assert {c.params.get("index_name") for c in searches} == {"sharded"}
        assert len({c.container for c in searches}) == 3  # one warm searcher per shard
        where = {"file_name": "bestiary.pdf"}
        assert_same_results(reference.search_batch(SHARD_QUERIES, k=3, where=where),
                            idx.search_batch(SHARD_QUERIES, k=3, where=where))
        assert idx.info().shards == 3
    assert _app_creates(standin) == 1


@pytest.mark.slow
def test_a_failed_shard_container_leaves_the_remote_index_intact(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=3) as idx:
        idx.index([corpus_dir])
        before = _hits(idx.search_batch(SHARD_QUERIES, k=5))
        current = (_volume(standin) / "sharded" / "CURRENT").read_text()
        standin.inject("ShardWriter.build", RuntimeError("CUDA out of memory (injected)"),
                       match=lambda args, kwargs: args[0].shard == "s001")
        with pytest.raises(ShardBuildError) as info:
            idx.index([corpus_dir], rebuild=True)
        assert set(info.value.failures) == {"s001"}
        assert "s001" in str(info.value) and "CUDA out of memory (injected)" in str(info.value)
        assert len(standin.calls_of("ShardWriter.build")) == 6  # the others ran to their end
        assert (_volume(standin) / "sharded" / "CURRENT").read_text() == current
        assert _hits(idx.search_batch(SHARD_QUERIES, k=5)) == before
        assert idx.index([corpus_dir], rebuild=True).chunks_total > 0  # and the next try goes through


def test_an_app_deployed_by_an_older_release_is_refused_once_with_redeploy(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    modal_app.app.deploy()
    app = standin.apps[standin.deployed[modal_app.APP_NAME]]
    del app.class_ids["ShardWriter"], app.function_ids["shards"], app.function_ids["app_version"]  # an older release
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=3, remote_app="deployed") as idx:
        with pytest.raises(RemoteError, match=r"older colbert-modal \(app version 1, this client needs \d+\); "
                                              "redeploy: colbert-modal deploy"):
            idx.index([corpus_dir])
    assert not standin.calls_of("Writer.*") and not standin.calls_of("manifest")  # refused before any work


def test_an_app_of_another_version_is_refused(standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert_modal import remote

    monkeypatch.setattr(modal_app, "API_VERSION", remote.API_VERSION + 1)  # what the deployed body answers
    modal_app.app.deploy()
    with _remote(tmp_path, remote_app="deployed") as idx:
        with pytest.raises(RemoteError, match="newer colbert-modal.*upgrade colbert-modal here"):
            idx.search("penguin")


def test_the_deployed_app_version_is_checked_once_per_session(
    standin: StandIn, papers_index: Path, tmp_path: Path
) -> None:
    _put_papers(standin, papers_index)
    modal_app.app.deploy()
    with _remote(tmp_path, remote_app="deployed") as idx:
        idx.search("penguin")
        idx.info()
        idx.search_batch(["penguin", "glacier"])
    assert len(standin.calls_of("app_version")) == 1
    with _remote(tmp_path, remote_app="deployed") as idx:  # a new session checks again
        idx.info()
    assert len(standin.calls_of("app_version")) == 2


def test_rerank_runs_in_the_searcher_container(standin: StandIn, papers_index: Path, tmp_path: Path) -> None:
    _put_papers(standin, papers_index)
    texts = ["flamingo glacier", "penguin quartz rhubarb", {"text": "quartz", "id": "q", "metadata": {"n": 1}}]
    local = ColbertIndexer("papers", index_root=papers_index.parent, progress=False).rerank("penguin quartz", texts)
    with _remote(tmp_path) as idx:  # no model given: the index's on the Volume
        hits = idx.rerank("penguin quartz", texts, k=2)
    assert [(h.index, h.id, h.metadata) for h in hits] == [(1, None, {}), (2, "q", {"n": 1})]
    assert [h.score for h in hits] == [h.score for h in local[:2]]
    assert "Searcher.rerank" in [c.tag for c in standin.calls]


def _publish_copy(index: Path, number: int) -> None:
    """Publish generation ``number`` of ``index`` on the Volume: a copy of g000001 (as another writer would)."""
    import json

    gen = index / "generations" / f"g{number:06d}"
    shutil.copytree(index / "generations" / "g000001", gen)
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["generation"] = number
    (gen / "manifest.json").write_text(json.dumps(manifest))
    (index / "CURRENT").write_text(gen.name + "\n")


@pytest.mark.slow
def test_concurrent_searches_in_one_container_never_answer_older_than_asked(
    standin: StandIn, papers_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 8: one input copies a new generation off the Volume (files open) while another, which
    asks for a newer one still (min_generation), reloads: its reload must not fail into an older answer."""
    import time

    from colbert_modal.remote import server

    monkeypatch.setenv("COLBERT_MODAL_REFRESH_INTERVAL", "0")
    _put_papers(standin, papers_index)
    index = _volume(standin) / "papers"
    real_copytree = shutil.copytree

    def slow_copy(src, dst, *args, **kwargs):  # a large generation: the copy holds a Volume file open a while
        if "modal-volumes-containers" in str(src):
            first = next(p for p in sorted(Path(src).rglob("*")) if p.is_file())
            with first.open("rb"):
                time.sleep(1.5)
        return real_copytree(src, dst, *args, **kwargs)

    answers: dict[str, int] = {}
    with modal_app.app.run():
        searcher = modal_app.Searcher(index_name="papers")
        assert searcher.search_shard.remote(["penguin"], k=1).generation == 1
        _publish_copy(index, 2)
        monkeypatch.setattr(server.shutil, "copytree", slow_copy)

        def ask(who: str, min_generation: int | None) -> None:
            answers[who] = searcher.search_shard.remote(["penguin"], k=1, min_generation=min_generation).generation

        a = threading.Thread(target=ask, args=("a", None))
        a.start()
        time.sleep(0.5)
        _publish_copy(index, 3)
        b = threading.Thread(target=ask, args=("b", 3))
        b.start()
        a.join(60)
        b.join(60)
    assert answers["b"] == 3, answers
    assert answers["a"] in (2, 3)
    assert len({c.container for c in standin.calls_of("Searcher.search_shard")}) == 1  # @modal.concurrent


@pytest.mark.slow
def test_a_rerank_reading_the_volume_never_fails_a_concurrent_search_for_its_own_write(
    standin: StandIn, papers_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Searcher container takes concurrent inputs (``@modal.concurrent``): one reranks, reading the index's
    manifest off the Volume (a file open), while another asks for a newer generation (``min_generation``) and
    must reload. Modal refuses a reload while files are open, so the Volume reads of one input and the reload
    of another take turns: the search answers the new generation, the rerank its scores."""
    import time

    from colbert_modal.remote import server

    _put_papers(standin, papers_index)
    index = _volume(standin) / "papers"
    real = server.read_manifest
    reading = threading.Event()

    def slow_read(root, name):  # a slow Volume: the rerank holds the manifest open a while
        if not reading.is_set():
            with (Path(root) / name / "CURRENT").open("rb"):
                reading.set()
                time.sleep(1.0)
        return real(root, name)

    out: dict[str, object] = {}
    with modal_app.app.run():
        searcher = modal_app.Searcher(index_name="papers")
        assert searcher.search_shard.remote(["penguin"], k=1).generation == 1  # a warm container
        _publish_copy(index, 2)
        monkeypatch.setattr(server, "read_manifest", slow_read)

        def rerank() -> None:
            out["rerank"] = searcher.rerank.remote("penguin", ["penguin quartz", "flamingo"])

        t = threading.Thread(target=rerank)
        t.start()
        assert reading.wait(30)
        try:
            out["search"] = searcher.search_shard.remote(["penguin"], k=1, min_generation=2).generation
        except Exception as exc:  # reported below
            out["search"] = exc
        t.join(60)
    assert out["search"] == 2, out
    assert [h.index for h in out["rerank"]] == [0, 1]  # type: ignore[attr-defined]
    assert len({c.container for c in standin.calls if c.tag.startswith("Searcher.")}) == 1


@pytest.mark.slow
def test_scanned_pages_are_ocrd_by_the_modal_function_mapped_over_pages(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colbert_modal import ocr
    from test_ocr import _lines, make_scan

    here: list[int] = []  # OCR run by this process's planning (there must be none: the pages go to Modal)
    in_function: list[int] = []
    real_run_job, real_read = ocr.run_job, ocr.read_pages

    def run_job(job):
        in_function.append(job.page)
        return real_run_job(job)

    def read_pages(*args, settings, **kwargs):
        if not settings.remote:
            here.append(1)
        return real_read(*args, settings=settings, **kwargs)

    monkeypatch.setattr(ocr, "run_job", run_job)
    monkeypatch.setattr("colbert_modal.loaders.read_pages", read_pages)
    mixed = make_scan(tmp_path / "mixed.pdf", [_lines("aardvark"), _lines("penguin")], scanned={2})
    scan = make_scan(tmp_path / "scan.pdf", [_lines("umbrella")], scanned={1})
    with _remote(tmp_path, "scans", model=HUB_ID, max_tokens=12, overlap=0) as idx:
        report = idx.index([mixed, scan])
        assert report.ocr_pages == {str(mixed): [2], str(scan): [1]}
        assert sorted(in_function) == [1, 2] and here == []
        assert {"FunctionMap", "FunctionPutInputs", "FunctionGetOutputs"} <= set(standin.rpcs)
        hits = idx.search("umbrella volcano walrus xylophone zeppelin", k=3)
        assert hits[0].source == str(scan) and hits[0].pages == [1] and "walrus" in hits[0].text.lower()
        manifest = idx._remote_runner().session.manifest("scans")  # the Volume's: the OCR image's engine
        assert manifest is not None and manifest.ocr == ocr.engine_id(ocr.lock_version() or "")
        assert idx.index([mixed, scan], rebuild=True).ocr_pages == {str(mixed): [2], str(scan): [1]}
        assert sorted(in_function) == [1, 2]  # read from this machine's OCR cache: not sent again


@pytest.mark.slow
def test_keyword_and_hybrid_search_in_the_searcher_containers(standin: StandIn, corpus_dir: Path, tmp_path: Path
                                                               ) -> None:
    """mode= reaches the Searcher; a sharded index's shards answer BM25 statistics, then their lists,
    and the client fuses them: the local unsharded index's results exactly, ties and filters included."""
    reference = ColbertIndexer("ref", model=HUB_ID, index_root=tmp_path / "ref", backend="exact", progress=False)
    reference.index([corpus_dir])
    queries = [*SHARD_QUERIES, "the state of the world", "NEAR(penguin) \"quartz*"]
    where = {"file_name": "bestiary.pdf"}
    for name, shards in (("plain", 1), ("sharded", 3)):
        with _remote(tmp_path, name, model=HUB_ID, shards=shards) as idx:
            idx.index([corpus_dir])
            for mode in ("keyword", "hybrid"):
                for k in (1, 3, 10):
                    assert idx.search_batch(queries, k=k, mode=mode) == reference.search_batch(queries, k=k, mode=mode)
                assert idx.search_batch(queries, k=3, mode=mode, where=where) == reference.search_batch(
                    queries, k=3, mode=mode, where=where)
            assert idx.search(queries[0], k=2, mode="hybrid", keyword_weight=2.5) == reference.search(
                queries[0], k=2, mode="hybrid", keyword_weight=2.5)

            async def both() -> list:  # .aio: modal's .remote.aio on this loop (a sharded index's two rounds too)
                return await asyncio.gather(*(idx.search_batch.aio(queries, k=3, mode=m) for m in ("keyword", "hybrid")))

            assert asyncio.run(both()) == [reference.search_batch(queries, k=3, mode=m) for m in ("keyword", "hybrid")]
            with pytest.raises(ConfigurationError, match="mode"):
                idx.search(queries[0], mode="bm25")
    shard_calls = standin.calls_of("Searcher.search_shard")
    assert {c.kwargs.get("mode", "colbert") for c in shard_calls} >= {"stats", "keyword", "hybrid"}
    assert {c.kwargs.get("mode") for c in standin.calls_of("Searcher.search_batch")} >= {"keyword", "hybrid"}
