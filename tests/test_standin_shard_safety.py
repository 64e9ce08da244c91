"""Sharded remote builds under Modal's Volume semantics (issue 21): every container sees the Volume as of its
last reload and publishes by commit, so no container may delete what it has not seen.

Through ``ColbertIndexer(mode="remote")``, the real modal client and the stand-in (tests/modal_standin: one
view of the Volume per container, see its docs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import test_standin_remote as remote_tests
from colbert_modal.errors import LoadError, ShardBuildError
from colbert_modal.remote import ApplyFinished
from colbert_modal.store import IndexStore, load_generation
from modal_standin import Kill, StandIn, standin_fixture, standin_server_fixture  # noqa: F401
from test_standin_remote import HUB_ID, _remote, _volume

hub_model, standin = remote_tests.hub_model, remote_tests.standin  # the fixtures


def _check_published(volume: Path, name: str) -> dict[str, str]:
    """Every shard generation the published top generation names is on the Volume and verifies."""
    top = IndexStore(volume, name).current()
    named = {}
    for sid, v in (top.manifest.shards or {}).items():
        gen = v.get("generation")
        if gen is None:
            continue
        path = volume / name / "shards" / sid / "generations" / gen
        assert (path / "manifest.json").is_file(), f"the top generation names {sid}/{gen}, which is gone"
        load_generation(path).verified_chunks()  # checksums
        named[sid] = gen
    return named


def _fails(shard: str):
    return lambda args, kwargs: args[0].shard == shard


@pytest.mark.slow
def test_a_retried_new_sharded_index_keeps_the_shard_generations_it_publishes(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    """Issue 21 item 1: the first build fails in one shard, leaving the other's sealed generation; the retry's
    Writer must not remove that shard's folder from its stale view while the shard's container commits a new
    generation into it."""
    standin.inject("ShardWriter.build", RuntimeError("boom"), match=_fails("s001"))
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=2) as idx:
        with pytest.raises(ShardBuildError, match="s001"):
            idx.index([corpus_dir])
        report = idx.index([corpus_dir])
        assert report.chunks_written > 0
        named = _check_published(_volume(standin), "sharded")
        assert sorted(named) == ["s000", "s001"]
        assert idx.search("penguin quartz walrus", k=3)
    # nothing unnamed is left behind once the next writer has pruned (here: the retry's publish, after its reload)
    shards = _volume(standin) / "sharded" / "shards"
    left = sorted(p.relative_to(shards).as_posix() for p in shards.glob("*/generations/*"))
    assert left == [f"{sid}/generations/{gen}" for sid, gen in sorted(named.items())], left
    top = json.loads((_volume(standin) / "sharded" / "generations" / "g000001" / "manifest.json").read_text())
    assert top["generation"] == 1


@pytest.mark.slow
def test_each_failed_shard_is_blamed_for_its_own_error(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 4: errors that carry no shard (a timed-out container; a LoadError, whose pickling drops the
    tag) come back in completion order; each must still be matched to the shard it came from."""
    import time

    from colbert_modal.remote import server

    real = server.build_shard

    def slow_s000(job, **kwargs):  # s000's build outlasts its (injected) timeout, whatever the machine
        if job.shard == "s000":
            time.sleep(2.0)
        return real(job, **kwargs)

    monkeypatch.setattr(server, "build_shard", slow_s000)
    standin.inject("ShardWriter.build", Kill("timeout", 0.5), match=_fails("s000"))  # times out, late
    standin.inject("ShardWriter.build", LoadError("x.pdf", "unreadable"), match=_fails("s001"))  # fails at once
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=2) as idx, pytest.raises(ShardBuildError) as caught:
        idx.index([corpus_dir])
    failures = caught.value.failures
    assert sorted(failures) == ["s000", "s001"]
    assert isinstance(failures["s001"], LoadError), failures
    assert "timed out" in str(failures["s000"]), failures
    assert not (_volume(standin) / "sharded" / "CURRENT").exists()


def _plan(folder: Path, name: str, shards: int):
    import cloudpickle

    from colbert_modal.chunking import Chunker, load_tokenizer
    from colbert_modal.pipeline import Settings, plan_update

    settings = Settings(HUB_ID, 256, 38, shard_count=shards)
    plan = plan_update([folder], name=name, settings=settings, manifest=None,
                       chunker=lambda: Chunker(load_tokenizer(HUB_ID), max_tokens=256, overlap=38))
    return cloudpickle.loads(cloudpickle.dumps(plan))


@pytest.mark.slow
def test_a_sharded_build_is_coordinated_from_a_cpu_container(standin: StandIn, corpus_dir: Path) -> None:
    """Issue 21 item 2: the coordinator of a sharded build holds no GPU and little memory, its timeout covers
    the waves of shard containers, and the shards still build on GPUs, at most MAX_GPUS at once."""
    from colbert_modal import modal_app
    from colbert_modal.remote import server

    assert server.coordinator_timeout(25, 3600, 10) == 3 * 3600 + server.COORDINATOR_SLACK
    assert server.coordinator_timeout(1000, 7200, 1) == server.MAX_FUNCTION_TIMEOUT
    plan = _plan(corpus_dir, "sharded", 3)
    timeout = server.coordinator_timeout(3, 600, modal_app.MAX_GPUS)
    with modal_app.app.run():
        coordinator = modal_app.Coordinator.with_options(timeout=timeout)()
        events = list(coordinator.apply_stream.remote_gen(plan, backend="exact"))
    assert isinstance(events[-1], ApplyFinished) and events[-1].report.chunks_total > 0
    (call,) = standin.calls_of("Coordinator.apply_stream")
    assert call.gpus == [] and call.options.timeout_secs == timeout
    base = standin.functions[standin.functions[call.function_id].base_id]
    resources = base.definition.ranked_functions[0].function.resources if hasattr(
        base.definition, "ranked_functions") else base.definition.resources
    assert resources.memory_mb == modal_app.COORDINATOR_MEMORY_MB and not resources.gpu_config.gpu_type
    builds = standin.calls_of("ShardWriter.build")
    assert len(builds) == 3 and all(c.gpus == modal_app.GPU for c in builds)
    assert sorted(_check_published(_volume(standin), "sharded")) == ["s000", "s001", "s002"]


CHAOS_RUNS = int(os.environ.get("COLBERT_MODAL_CHAOS_RUNS") or 1)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(CHAOS_RUNS))
def test_chaos_sharded_builds_with_a_killed_shard_a_timed_out_writer_and_readers_throughout(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: int
) -> None:
    """A 4-shard remote index: an update whose shard container is killed mid-commit (modal's client runs the
    input again in a new container), an update whose Writer times out while its shards run (they run on),
    then a clean retry that takes the lapsed lease over; readers search every shard throughout. Every search
    answers from a published generation, nothing a reader needs is deleted, every published generation
    verifies. ``COLBERT_MODAL_CHAOS_RUNS=20`` repeats it."""
    import shutil
    import threading
    import time

    from colbert_modal import modal_app, sharding
    from colbert_modal.remote import leases, server

    monkeypatch.setattr(leases, "LEASE_TTL", 6.0)
    monkeypatch.setattr(leases, "COMMIT_MARGIN", 1.0)
    monkeypatch.setenv("COLBERT_MODAL_REFRESH_INTERVAL", "0")
    docs = tmp_path / "docs"
    shutil.copytree(corpus_dir, docs)
    volume = _volume(standin)
    published: set[int] = set()
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for sid in sharding.shard_ids(4):
                try:
                    answer = modal_app.Searcher(index_name="chaos", shard=sid).search_shard.remote(["penguin"], k=2)
                    seen.append(answer.generation)
                except Exception as exc:
                    errors.append(exc)
            time.sleep(0.1)

    def publish(expected: int) -> None:
        assert int((volume / "chaos" / "CURRENT").read_text().strip()[1:]) == expected
        published.add(expected)
        _check_published(volume, "chaos")

    with _remote(tmp_path, "chaos", model=HUB_ID, shards=4, lock_timeout=60) as idx:
        idx.index([docs])
        publish(1)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            (docs / "z1.txt").write_text("A zeppelin over the walrus, one.\n", encoding="utf-8")
            standin.inject("ShardWriter.build", Kill("mid-commit"))
            idx.index([docs])
            publish(2)
            assert any(c.box is not None and c.box.dead for c in standin.calls_of("ShardWriter.build"))

            real = server.build_shard

            def slow(*args, **kwargs):
                time.sleep(2.5)
                return real(*args, **kwargs)

            (docs / "z2.txt").write_text("A zeppelin over the walrus, two.\n", encoding="utf-8")
            monkeypatch.setattr(server, "build_shard", slow)
            standin.timeouts["Coordinator.*"] = 1.0
            with pytest.raises(Exception, match="timed out"):
                idx.index([docs])
            del standin.timeouts["Coordinator.*"]
            monkeypatch.setattr(server, "build_shard", real)
            report = idx.index([docs])  # waits for the dead Writer's lease to lapse, then takes it over
            assert report.indexed == [str(docs / "z2.txt")]
            publish(3)
            time.sleep(0.5)
        finally:
            stop.set()
            reader.join(60)
    assert not errors, errors[:3]
    assert seen and set(seen) <= published, (sorted(set(seen)), published)
    assert standin.dict_items(modal_app.LEASES_NAME) == {}
