"""Hub ids offline: "offline" is decided at once, the hub client's retries stay off the terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from colbert_modal.cli import cli

SRC = Path(__file__).resolve().parent.parent / "src"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_unreachable_hub_fails_fast_without_retry_chatter(tmp_path: Path) -> None:
    """A first run with HF_HUB_OFFLINE unset and no network (here: the hub at a closed local port)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    script = textwrap.dedent(
        """
        import time
        from colbert_modal.errors import ModelLoadError
        from colbert_modal.hub import resolve_hub_file, resolve_model

        started = time.monotonic()
        for call in (lambda: resolve_hub_file("nobody/no-such-colbert", "tokenizer.json"),
                     lambda: resolve_model("nobody/no-such-colbert")):
            try:
                call()
            except ModelLoadError as exc:
                print("ModelLoadError:", exc)
        print("seconds", time.monotonic() - started)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for noise in ("Retrying", "MaxRetryError", "Traceback", "thrown while requesting"):
        assert noise not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert float(lines[-1].split()[1]) < 5.0, out.stdout
    errors = [ln for ln in lines if ln.startswith("ModelLoadError:")]
    assert len(errors) == 2 and all("nobody/no-such-colbert" in e and "cannot be reached" in e for e in errors)
    assert "model='/path/to/" in errors[0]  # what to do instead


def test_offline_setting_is_decided_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert_modal import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_doctor_offline_names_the_model_step_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["doctor", "--index-root", str(tmp_path / "root")])
    seconds = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert seconds < 10, result.output
    (model,) = [ln for ln in result.output.splitlines() if ln.split()[1:2] == ["model"]]
    assert model.startswith("FAIL") and "colbert-ir/colbertv2.0" in model and "cannot be reached" in model
    assert "--model DIR" in result.output
    (tiny,) = [ln for ln in result.output.splitlines() if " tiny index " in ln]
    assert tiny.startswith("--") and "skipped" in tiny
    assert "Retrying" not in capfd.readouterr().err
