"""Writers in separate containers: the index's write lease (issue 10, defect 4).

Two Modal containers (two ephemeral apps, a deployed and an ephemeral one,
two ``with_options`` variants) share the Volume but not a flock, and can
have the same pid. Each can pass the base-generation check before the
other publishes. ``server.WriteLease`` serialises them through a store both
see: ``modal.Dict`` on Modal; here ``server.DirectoryLeases`` on the
directory standing in for the Volume, which processes on one filesystem
share (the test's stand-in for the Dict: put-if-absent is atomic in both).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from colbert_modal import modal_app
from colbert_modal.chunking import Chunker, load_tokenizer
from colbert_modal.errors import IndexLockedError
from colbert_modal.pipeline import Settings, UpdatePlan, plan_update
from colbert_modal.remote import server
from colbert_modal.store import IndexStore

SAME_PID = 4242

#: One "container": a process that shares the Volume directory, reports
#: the same pid as the other, and has no flock (a Volume has none; each
#: container's lock sees only itself). It waits, once past every check
#: (about to create its build directory), until the other container is
#: there too or has finished, then builds and publishes through the real
#: Writer body.
CONTAINER = textwrap.dedent(
    """
    import json, os, pickle, sys, time
    from pathlib import Path

    volume, plan_file, handshake, me, other, out = sys.argv[1:]
    os.environ["COLBERT_MODAL_VOLUME_PATH"] = volume
    os.getpid = lambda: {pid}
    from colbert_modal import modal_app, store

    store._flock = lambda fh: None
    build_dir = store.IndexStore.new_build_dir

    def meet_then_build(self, number):
        Path(handshake, "arrived-" + me).touch()
        deadline = time.monotonic() + 300
        while not any(Path(handshake, f + other).exists() for f in ("arrived-", "done-")):
            if time.monotonic() > deadline:
                raise RuntimeError("the other container never arrived")
            time.sleep(0.05)
        return build_dir(self, number)

    store.IndexStore.new_build_dir = meet_then_build
    plan = pickle.loads(Path(plan_file).read_bytes())
    try:
        report = modal_app.Writer().apply.local(plan, backend="exact")
        result = {{"written": report.chunks_written}}
    except Exception as exc:
        result = {{"error": type(exc).__name__, "message": str(exc)}}
    Path(out).write_text(json.dumps(result))
    Path(handshake, "done-" + me).touch()
    """
).format(pid=SAME_PID)


def _plan(folder: Path, ckpt: Path, name: str) -> UpdatePlan:
    settings = Settings(str(ckpt), 256, 38)
    plan = plan_update(
        [folder], name=name, settings=settings, manifest=None,
        chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=256, overlap=38),
    )
    return cloudpickle.loads(cloudpickle.dumps(plan))


def test_two_containers_never_publish_a_merged_generation(colbert_checkpoint: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    corpora = {}
    for who, words in (("a", "walrus penguin harbour"), ("b", "meteor glacier umbrella")):
        folder = corpora[who] = tmp_path / f"docs-{who}"
        folder.mkdir()
        for i in range(3):
            (folder / f"{who}{i}.txt").write_text(f"{words} number {i} of {who}.\n", encoding="utf-8")
        (tmp_path / f"plan-{who}.pkl").write_bytes(pickle.dumps(_plan(folder, colbert_checkpoint, "shared")))
    script = tmp_path / "container.py"
    script.write_text(CONTAINER, encoding="utf-8")
    procs = {
        who: subprocess.Popen(
            [sys.executable, str(script), str(volume), str(tmp_path / f"plan-{who}.pkl"), str(handshake),
             who, other, str(tmp_path / f"out-{who}.json")],
            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for who, other in (("a", "b"), ("b", "a"))
    }
    logs = {who: p.communicate(timeout=600)[0] for who, p in procs.items()}
    results = {}
    for who, p in procs.items():
        assert p.returncode == 0, logs[who]
        results[who] = json.loads((tmp_path / f"out-{who}.json").read_text())

    winners = [who for who, r in results.items() if "written" in r]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    assert results[loser]["error"] == IndexLockedError.__name__, results
    assert f"another writer (process {SAME_PID} on " in results[loser]["message"]
    assert "is updating index 'shared'; try again when it is done" in results[loser]["message"]

    gen = IndexStore(volume, "shared").current()
    chunks = gen.verified_chunks()  # checksums of chunks.jsonl and the engine files
    assert len(chunks) == gen.manifest.n_chunks == results[winners[0]]["written"]
    assert {c.source for c in chunks} == set(gen.manifest.files)
    assert {Path(p).name for p in gen.manifest.files} == {p.name for p in corpora[winners[0]].iterdir()}
    assert gen.manifest.generation == 1
    assert not (volume / ".leases").exists(), "the winner's lease outlived its write"


def test_writer_bodies_refuse_while_another_app_holds_the_lease(
    colbert_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "volume"
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(volume))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("walrus penguin harbour.\n", encoding="utf-8")
    plan = _plan(docs, colbert_checkpoint, "held")
    leases = server.DirectoryLeases(volume / ".leases")
    held = {"token": "t", "owner": "app ap-other", "expires": 4e9}
    assert leases.put("held", held, skip_if_exists=True)
    message = r"another writer \(app ap-other\) is updating index 'held'; try again when it is done"
    with pytest.raises(IndexLockedError, match=message):
        modal_app.Writer().apply.local(plan, backend="exact")
    stream = modal_app.Writer().apply_stream.local(plan, backend="exact")
    assert next(stream) == server.STARTED
    with pytest.raises(IndexLockedError, match=message):
        next(stream)
    with pytest.raises(IndexLockedError, match=message):
        modal_app.Writer().adopt.local("held", "some-upload")
    assert leases.get("held") == held  # still the other app's
    assert not (volume / "held" / "generations").exists() or not any((volume / "held" / "generations").iterdir())


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lapsed_lease_is_taken_over_and_only_its_holder_releases(tmp_path: Path) -> None:
    leases = server.DirectoryLeases(tmp_path / "leases")
    clock = _Clock()
    a = server.WriteLease(leases, "idx", owner="writer A", ttl=60, clock=clock)
    b = server.WriteLease(leases, "idx", owner="writer B", ttl=60, clock=clock)
    a.acquire()
    with pytest.raises(IndexLockedError, match=r"another writer \(writer A\) is updating index 'idx'"):
        b.acquire()
    clock.now += 61  # A crashed: its lease lapses
    b.acquire()
    assert leases.get("idx")["owner"] == "writer B"
    a.release()  # not the holder any more: nothing happens
    assert leases.get("idx")["owner"] == "writer B"
    c = server.WriteLease(leases, "idx", owner="writer C", ttl=60, clock=clock)
    with pytest.raises(IndexLockedError, match=r"\(writer B\)"):
        c.acquire()
    b.release()
    assert leases.get("idx") is None
    c.acquire()
    c.release()
    assert leases.get("idx") is None


def test_lapsed_lease_is_taken_over_by_one_writer_only(tmp_path: Path) -> None:
    leases = server.DirectoryLeases(tmp_path / "leases")
    clock = _Clock()
    leases.put("idx", {"token": "dead", "owner": "crashed", "expires": clock.now - 1}, skip_if_exists=True)
    # B read the lapsed entry and claimed it first; C, seeing the same entry, must not take over too.
    assert leases.put("idx@dead", "b-token", skip_if_exists=True)
    c = server.WriteLease(leases, "idx", owner="writer C", ttl=60, clock=clock)
    with pytest.raises(IndexLockedError, match=r"\(crashed\)"):
        c.acquire()
    assert leases.get("idx")["token"] == "dead"


def test_directory_leases_put_if_absent(tmp_path: Path) -> None:
    leases = server.DirectoryLeases(tmp_path / "leases")
    assert leases.put("x/y", {"v": 1}, skip_if_exists=True)
    assert not leases.put("x/y", {"v": 2}, skip_if_exists=True)
    assert leases.get("x/y") == {"v": 1}
    assert leases.put("x/y", {"v": 3})
    assert leases.pop("x/y") == {"v": 3}
    assert leases.pop("x/y", "gone") == "gone"
    assert not (tmp_path / "leases").exists()  # no folder left behind


# --- the lease in the Dict, through the real client and the stand-in (issue 21 item 6) ----------------------

import test_standin_remote as remote_tests  # noqa: E402
from colbert_modal.remote import leases as lease_module  # noqa: E402
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: E402, F401
from test_standin_remote import HUB_ID, _remote, _volume  # noqa: E402

hub_model, standin = remote_tests.hub_model, remote_tests.standin  # the fixtures


@pytest.mark.slow
def test_a_lapsed_lease_is_taken_over_and_leaves_no_key_behind(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    standin.dict_put(modal_app.LEASES_NAME, "papers", {"token": "dead", "owner": "app ap-gone", "expires": 1.0})
    with _remote(tmp_path, model=HUB_ID) as idx:
        assert idx.index(corpus_dir).chunks_written > 0
    assert standin.dict_items(modal_app.LEASES_NAME) == {}  # neither the lease nor the takeover key "papers@dead"


@pytest.mark.slow
def test_a_writer_whose_lease_was_taken_over_commits_nothing(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    """While the shards build, another writer takes the lease over (as after a lapse): the Writer must not
    commit its top generation, nor its shard containers theirs."""
    thief = {"token": "thief", "owner": "app ap-next", "expires": 4e9}

    def take_over(args: tuple, kwargs: dict) -> bool:
        standin.dict_put(modal_app.LEASES_NAME, "sharded", thief)
        return False  # inject nothing: the shard builds as usual

    standin.inject("ShardWriter.build", RuntimeError("unused"), match=take_over)
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=2) as idx, pytest.raises(Exception) as caught:
        idx.index([corpus_dir])
    assert "write lease" in str(caught.value), caught.value
    volume = _volume(standin)
    assert not (volume / "sharded" / "CURRENT").exists()
    assert not list(volume.glob("sharded/shards/*/generations/g*")), "a shard committed under a lost lease"
    assert standin.dict_items(modal_app.LEASES_NAME) == {"sharded": thief}


@pytest.mark.slow
def test_shard_containers_of_a_timed_out_writer_commit_nothing_once_the_lease_is_taken(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 2: the Writer times out while its ShardWriters run (the stand-in, like Modal as far as
    its docs say, does not cancel them); the next writer takes the lapsed lease; the leftover shard
    containers must not commit generations that could collide with the next update's."""
    import time as _time

    from colbert_modal import sharding

    real = server.build_shard

    def slow_build(*args, **kwargs):
        _time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(server, "build_shard", slow_build)
    standin.timeouts["Coordinator.*"] = 1.5  # the sharded build's coordinator
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=2) as idx, pytest.raises(Exception, match="timed out"):
        idx.index([corpus_dir])
    standin.dict_put(modal_app.LEASES_NAME, "sharded", {"token": "next", "owner": "app ap-next", "expires": 4e9})
    deadline = _time.monotonic() + 120
    while any(c.status == "running" for c in standin.calls_of("ShardWriter.build")) or not standin.calls_of(
        "ShardWriter.build"
    ):
        assert _time.monotonic() < deadline
        _time.sleep(0.2)
    assert not list(_volume(standin).glob("sharded/shards/*/generations/g*")), "a leftover shard committed"
    assert {c.status for c in standin.calls_of("ShardWriter.build")} == {"FAILURE"}
    assert sharding.shard_ids(2) == sorted(c.args[0].shard for c in standin.calls_of("ShardWriter.build"))
    assert lease_module.LEASE_TTL <= 120


@pytest.mark.slow
def test_delete_takes_the_lease(standin: StandIn, corpus_dir: Path, tmp_path: Path) -> None:
    """Issue 21 item 6: deleting an index on the Volume waits for no writer and races none: it takes the lease."""
    with _remote(tmp_path, model=HUB_ID) as idx:
        idx.index(corpus_dir)
    held = {"token": "t", "owner": "app ap-other", "expires": 4e9}
    standin.dict_put(modal_app.LEASES_NAME, "papers", held)
    with modal_app.app.run():
        with pytest.raises(IndexLockedError, match=r"app ap-other"):
            modal_app.delete.remote("papers")
        assert (_volume(standin) / "papers" / "CURRENT").exists()
        standin.dict_put(modal_app.LEASES_NAME, "papers", {**held, "expires": 1.0})  # lapsed
        assert modal_app.delete.remote("papers") is True
        assert modal_app.delete.remote("papers") is False
    assert not (_volume(standin) / "papers").exists()
    assert standin.dict_items(modal_app.LEASES_NAME) == {}
