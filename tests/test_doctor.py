"""``colbert-modal doctor``: the first-run check, locally, without credentials, and against the stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_standin_remote import HUB_ID, HubModel

from colbert_modal import modal_app
from colbert_modal.cli import cli
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixture modal_standin)


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["doctor", *args])
    return result.exit_code, result.output


def _line(output: str, step: str) -> str:
    (line,) = [ln for ln in output.splitlines() if f" {step} " in ln]
    return line


@pytest.fixture
def hub(tmp_path: Path, colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    HubModel(tmp_path / "hub", colbert_checkpoint).apply(monkeypatch)


@pytest.fixture
def no_modal_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import modal.config

    monkeypatch.setattr(modal.config, "_user_config", {})


def test_local(colbert_checkpoint: Path, tmp_path: Path) -> None:
    code, out = _doctor("--model", str(colbert_checkpoint), "--index-root", str(tmp_path / "root"))
    assert code == 0, out
    for step in ("engine", "index root", "tiny index"):
        assert _line(out, step).startswith("ok")
    assert "All checks passed." in out
    assert list((tmp_path / "root").iterdir()) == []  # nothing left behind


def test_local_unwritable_root_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out = _doctor("--index-root", str(blocker / "root"))
    assert code == 1
    assert _line(out, "index root").startswith("FAIL") and "--index-root" in out
    assert _line(out, "tiny index").startswith("--")


def test_remote_without_credentials(no_modal_config: None) -> None:
    code, out = _doctor("--remote")
    assert code == 6
    assert _line(out, "credentials").startswith("FAIL") and "modal setup" in out
    assert "skipped" in out


def test_remote_reachable_not_deployed_stops_before_building(modal_standin: StandIn) -> None:
    code, out = _doctor("--remote")
    assert code == 0, out
    assert _line(out, "credentials").startswith("ok") and "MODAL_TOKEN_ID" in out
    assert modal_standin.token[1] not in out  # never the secret
    assert _line(out, "reachability").startswith("ok") and "127.0.0.1" in out
    assert "not deployed" in _line(out, "deployed app") and "colbert-modal deploy" in out
    assert "--build-image" in out
    assert "AppCreate" not in modal_standin.rpcs  # nothing started, nothing built


def test_remote_unreachable(modal_standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_SERVER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("COLBERT_MODAL_PROBE_TIMEOUT", "2")
    code, out = _doctor("--remote")
    assert code == 6 and _line(out, "reachability").startswith("FAIL") and "network" in out


@pytest.mark.parametrize("deployed", [False, True], ids=["ephemeral-build-image", "deployed"])
def test_remote_round_trip(modal_standin: StandIn, hub: None, deployed: bool) -> None:
    if deployed:
        modal_app.app.deploy()
    code, out = _doctor("--remote", "--model", HUB_ID, *([] if deployed else ["--build-image"]))
    assert code == 0, out
    assert _line(out, "tiny index + search").startswith("ok") and "GPU" in _line(out, "tiny index + search")
    assert _line(out, "delete").startswith("ok")
    assert _line(out, "Volume: a commit seen elsewhere").startswith("ok")  # probe_write and probe_read: two containers
    assert _line(out, "write lease (Modal Dict)").startswith("ok")
    (write,), (read,) = modal_standin.calls_of("probe_write"), modal_standin.calls_of("probe_read")
    assert write.container != read.container
    assert ("image" in out) != deployed
    assert "All checks passed." in out or not deployed
    volume = modal_standin.volume_dir(modal_app.VOLUME_NAME)
    assert [p.name for p in volume.iterdir()] == []  # the throwaway index is gone
    assert len(modal_standin.calls_of("Writer.apply")) == 1


def test_remote_a_volume_that_shows_no_commit_elsewhere_fails_the_step(
    modal_standin: StandIn, hub: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were Modal's Volume to stop publishing a commit to other containers, doctor says so (not the tests)."""
    import sys

    real = modal_app._commit_volume

    def commit() -> None:  # the probe's commit publishes nothing; the index's commits work
        if sys._getframe(1).f_code.co_name != "probe_write":
            real()

    monkeypatch.setattr(modal_app, "_commit_volume", commit)
    modal_app.app.deploy()
    code, out = _doctor("--remote", "--model", HUB_ID)
    assert code != 0
    assert _line(out, "tiny index + search").startswith("ok")
    line = _line(out, "Volume: a commit seen elsewhere")
    assert "FAIL" in line and "not seen by another after reload()" in line, out
