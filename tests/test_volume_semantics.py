"""The stand-in's Volume and Dict behave as Modal's do (tests/modal_standin/containers.py says where each rule
comes from): each container has its own view of a Volume, taken at its start and at ``reload()``; ``commit()``
publishes it (last write wins per path, deletions included); ``reload()`` fails while the container has a
file open under the mount; both Volume versions; the Dict's put-if-absent; killed and timed-out containers.
"""

# No `from __future__ import annotations`: modal.parameter() reads real annotations.

import time
from pathlib import Path

import modal
import modal.exception
import pytest

from colbert_modal.remote import VOLUME_MOUNT, server
from modal_standin import Kill, StandIn, standin_fixture, standin_server_fixture  # noqa: F401

VOLUME = "semantics"
sem_app = modal.App("volume-semantics")
sem_volume = modal.Volume.from_name(VOLUME, create_if_missing=True)
sem_dict = modal.Dict.from_name("semantics-dict", create_if_missing=True)


def _run(ops: list[tuple]) -> list:
    """Apply ``ops`` to this container's view of the Volume; the answers of the reads and reloads."""
    root = server.volume_path()
    out: list = []
    for op, *args in ops:
        if op == "write":
            (root / args[0]).parent.mkdir(parents=True, exist_ok=True)
            (root / args[0]).write_text(args[1])
        elif op == "delete":
            target = root / args[0]
            if target.is_dir():
                import shutil

                shutil.rmtree(target)
            else:
                target.unlink()
        elif op == "read":
            p = root / args[0]
            out.append(p.read_text() if p.exists() else None)
        elif op == "commit":
            sem_volume.commit()
        elif op == "reload":
            try:
                sem_volume.reload()
                out.append("reloaded")
            except RuntimeError as exc:
                out.append(f"refused: {exc}")
        elif op == "reload-holding":  # reload with a file of the mount open
            with (root / args[0]).open("rb"):
                try:
                    sem_volume.reload()
                    out.append("reloaded")
                except RuntimeError as exc:
                    out.append(f"refused: {exc}")
        elif op == "sleep":
            time.sleep(args[0])
        elif op == "where":
            out.append(str(root))
    return out


@sem_app.cls(volumes={VOLUME_MOUNT: sem_volume}, timeout=60)
class Box:
    """One container per ``who`` (a class variant): a test's stand-in for one Modal container."""

    who: str = modal.parameter()

    @modal.method()
    def run(self, ops: list[tuple]) -> list:
        return _run(ops)


#: What Shared's @enter saw: (container's view, when it began, when it ended), one per run
ENTERED: list = []


@sem_app.cls(volumes={VOLUME_MOUNT: sem_volume}, timeout=60)
@modal.concurrent(max_inputs=4)
class Shared:
    """One container taking concurrent inputs: its @enter is slow (a model loading)."""

    who: str = modal.parameter()

    @modal.enter()
    def load(self) -> None:
        began = time.monotonic()
        time.sleep(0.5)
        self.entered = (str(server.volume_path()), began, time.monotonic())
        ENTERED.append(self.entered)

    @modal.method()
    def run(self, ops: list[tuple]) -> tuple:
        return self.entered, time.monotonic(), _run(ops)


@sem_app.function(volumes={VOLUME_MOUNT: sem_volume}, timeout=60)
def child(i: int, seconds: float) -> int:
    _run([("sleep", seconds), ("write", f"child-{i}", "done"), ("commit",)])
    return i


@sem_app.function(volumes={VOLUME_MOUNT: sem_volume}, timeout=60)
def parent(seconds: float) -> list:
    """Maps children, then writes and commits: killed by its timeout while the children run."""
    done = list(child.map(range(2), [seconds] * 2))
    _run([("write", "parent", "done"), ("commit",)])
    return done


@sem_app.function(timeout=60)
def dict_ops() -> list:
    return [
        sem_dict.put("k", {"v": 1}, skip_if_exists=True),
        sem_dict.put("k", {"v": 2}, skip_if_exists=True),
        sem_dict.get("k"),
        sem_dict.contains("k"),
        sem_dict.pop("k"),
        sem_dict.get("k", "gone"),
        modal.is_local(),
    ]


@pytest.fixture
def volume(modal_standin: StandIn) -> Path:
    path = modal_standin.volume_dir(VOLUME)
    path.mkdir(parents=True)
    return path


def test_a_write_is_seen_by_another_container_only_after_commit_and_reload(
    modal_standin: StandIn, volume: Path
) -> None:
    a, b = Box(who="a"), Box(who="b")
    with sem_app.run():
        assert b.run.remote([("read", "x")]) == [None]  # b's view is taken now: empty
        a.run.remote([("write", "x", "one")])
        assert not (volume / "x").exists()  # not committed
        assert b.run.remote([("reload",), ("read", "x")]) == ["reloaded", None]
        a.run.remote([("write", "y", "two"), ("commit",)])  # publishes x and y
        assert (volume / "x").read_text() == "one" and (volume / "y").read_text() == "two"
        assert b.run.remote([("read", "x")]) == [None]  # b has not reloaded: its view is as it was
        assert b.run.remote([("reload",), ("read", "x"), ("read", "y")]) == ["reloaded", "one", "two"]
        paths = a.run.remote([("where",)]) + b.run.remote([("where",)])
    assert len(set(paths)) == 2 and all(Path(p) != volume for p in paths)  # each container its own view
    assert modal_standin.calls_of("Box.run")[0].box is not modal_standin.calls_of("Box.run")[1].box


def test_commit_last_write_wins_per_path_and_deletions_are_published(modal_standin: StandIn, volume: Path) -> None:
    (volume / "keep").write_text("0")
    (volume / "gone").write_text("0")
    (volume / "d").mkdir()
    (volume / "d" / "f").write_text("0")
    a, b = Box(who="a"), Box(who="b")
    with sem_app.run():
        a.run.remote([("read", "keep")])  # both views taken with everything
        b.run.remote([("read", "keep")])
        a.run.remote([("write", "keep", "a"), ("delete", "gone"), ("delete", "d"), ("commit",)])
        assert not (volume / "gone").exists() and not (volume / "d").exists()
        b.run.remote([("write", "keep", "b"), ("commit",)])  # b never touched "gone": it stays deleted
        assert (volume / "keep").read_text() == "b" and not (volume / "gone").exists()
        # a deleted folder goes with what another container committed into it meanwhile
        b.run.remote([("reload",), ("write", "e/new", "b"), ("commit",)])
        a.run.remote([("reload",), ("delete", "e"), ("commit",)])
    assert not (volume / "e").exists()


def test_reload_is_refused_while_the_container_has_a_file_open(modal_standin: StandIn, volume: Path) -> None:
    (volume / "x").write_text("0")
    with sem_app.run():
        out = Box(who="a").run.remote([("reload-holding", "x"), ("reload",)])
    assert out[0].startswith("refused: there are open files preventing the operation"), out
    assert "'x'" in out[0]
    assert out[1] == "reloaded"  # closed again: fine


@pytest.mark.parametrize("version", [1, 2])
def test_both_volume_versions_serve_the_client_and_the_containers(
    modal_standin: StandIn, volume: Path, tmp_path: Path, version: int
) -> None:
    modal_standin.volume_version = version
    local = tmp_path / "up"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha")
    (local / "sub" / "b.txt").write_text("beta")
    vol = modal.Volume.from_name(VOLUME)  # a fresh handle: the version is read when it is looked up
    with vol.batch_upload() as batch:
        batch.put_directory(str(local), "up")
    assert (volume / "up" / "sub" / "b.txt").read_text() == "beta"
    assert sorted(e.path for e in vol.listdir("up", recursive=True)) == ["up/a.txt", "up/sub", "up/sub/b.txt"]
    assert b"".join(vol.read_file("up/a.txt")) == b"alpha"
    with sem_app.run():
        assert Box(who="a").run.remote([("read", "up/a.txt")]) == ["alpha"]
    vol.remove_file("up", recursive=True)
    assert not (volume / "up").exists()
    v1 = {"VolumePutFiles", "VolumeListFiles", "VolumeRemoveFile", "MountPutFile"}
    v2 = {"VolumePutFiles2", "VolumeListFiles2", "VolumeRemoveFile2"}
    used = set(modal_standin.rpcs)
    assert (v1 <= used, v2 & used) == ((True, set()) if version == 1 else (False, v2)), used


def test_dict_put_if_absent_from_a_container_and_from_here(modal_standin: StandIn) -> None:
    with sem_app.run():
        assert dict_ops.remote() == [True, False, {"v": 1}, True, {"v": 1}, "gone", False]
    assert sem_dict.put("held", "x", skip_if_exists=True)
    assert not sem_dict.put("held", "y", skip_if_exists=True)
    assert modal_standin.dict_items("semantics-dict") == {"held": "x"}
    assert {"DictUpdate", "DictGet", "DictPop", "DictContains"} <= set(modal_standin.rpcs)


@pytest.mark.parametrize(("at", "published"), [("commit", 0), ("mid-commit", 2)])
def test_a_container_killed_at_its_commit_publishes_nothing_more(
    modal_standin: StandIn, volume: Path, at: str, published: int
) -> None:
    modal_standin.inject("Box.run", Kill(at))
    ops = [("write", f"f{i}", "x") for i in range(4)] + [("commit",), ("write", "after", "x"), ("commit",)]
    with sem_app.run():
        with pytest.raises(modal.exception.InternalFailure, match="killed at its Volume commit"):
            Box(who="a").run.remote(ops)
        assert Box(who="a").run.remote([("read", "f3")]) == [None]  # a new container: the dead one is gone
    assert len(list(volume.iterdir())) == published
    assert not (volume / "after").exists()
    assert [c.container for c in modal_standin.calls_of("Box.run")] == [1, 2]


def test_a_parent_times_out_while_its_map_children_run_and_they_run_on(modal_standin: StandIn, volume: Path) -> None:
    modal_standin.timeouts["parent"] = 0.5
    with sem_app.run():
        with pytest.raises(modal.exception.FunctionTimeoutError):
            parent.remote(1.5)
        deadline = time.monotonic() + 30
        while len(modal_standin.calls_of("child")) < 2 or any(c.status == "running" for c in modal_standin.calls_of("child")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # the children were not cancelled: they committed after their parent died; the parent committed nothing
    assert sorted(p.name for p in volume.iterdir()) == ["child-0", "child-1"]
    assert {c.status for c in modal_standin.calls_of("child")} == {"SUCCESS"}
    (call,) = modal_standin.calls_of("parent")
    assert call.status == "TIMEOUT" and call.box is not None and call.box.dead


def test_enter_runs_once_per_container_before_its_concurrent_inputs(modal_standin: StandIn, volume: Path) -> None:
    """Modal's guide (lifecycle hooks): @modal.enter runs once, when the container starts, before its inputs.
    (Inputs that arrive together at a cold ``@modal.concurrent`` container must not each run it.)"""
    ENTERED.clear()
    with sem_app.run():
        out = list(Shared(who="a").run.map([[("where",)]] * 3))
    assert len(ENTERED) == 1, ENTERED
    (entered,) = ENTERED
    assert all(seen == entered and started >= entered[2] for seen, started, _ in out)
    assert len({c.container for c in modal_standin.calls_of("Shared.run")}) == 1


def test_a_reload_never_hides_a_path_that_stays(modal_standin: StandIn, volume: Path, monkeypatch) -> None:
    """Modal refuses a reload while files are open, and otherwise swaps in the committed state: a file there
    before and after (an input of the same container reading between two opens) does not vanish meanwhile."""
    import os

    from modal_standin.containers import View

    (volume / "kept").mkdir()
    for i in range(3):
        (volume / "kept" / f"f{i}").write_text(str(i))
    view = View(volume, modal_standin.view_dir("t", VOLUME), modal_standin.volume_lock)
    (volume / "new").write_text("n")
    (volume / "kept" / "f2").unlink()
    seen: list = []
    real = os.sendfile

    def watching(*args):  # each file the reload copies (shutil's fast copy): what a reader would find now
        seen.append(sorted(p.name for p in (view.path / "kept").glob("*")) if (view.path / "kept").is_dir() else None)
        return real(*args)

    monkeypatch.setattr(os, "sendfile", watching)
    view.take()
    assert seen and all(s is not None and {"f0", "f1"} <= set(s) for s in seen), seen
    assert sorted(p.relative_to(view.path).as_posix() for p in view.path.rglob("*")) == [
        "kept", "kept/f0", "kept/f1", "new"]
    assert (view.path / "new").read_text() == "n"
