"""The Modal images: installed from the locks with a pinned uv; colbert-ai's extensions built once per device.

The lock tests read what the real modal client sends for each image (the
stand-in records every ``ImageGetOrCreate``): the Dockerfile commands and the
files of the build context.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from colbert_modal import modal_app
from colbert_modal.engine import _upstream
from colbert_modal.remote import UV_VERSION
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixture modal_standin)

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _lock(path: Path) -> dict[str, str]:
    """``name -> version`` of a lock; every line must pin one exact version."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _unsatisfied(requirements: list[str], pins: dict[str, str]) -> list[str]:
    bad = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11", "sys_platform": "linux"}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            bad.append(f"{text} (lock: {version})")
    return bad


def _not_modal(requirements: list[str]) -> list[str]:
    # Modal mounts its own client into every container; the images do not install it.
    return [r for r in requirements if canonicalize_name(Requirement(r).name) != "modal"]


def test_gpu_lock_satisfies_core_and_local_extra() -> None:
    pins = _lock(modal_app.IMAGE_LOCK)
    wanted = _not_modal(PROJECT["dependencies"]) + PROJECT["optional-dependencies"]["local"]
    assert _unsatisfied(wanted, pins) == []
    assert pins["torch"] == "2.8.0" and "ninja" in pins
    assert "modal" not in pins
    assert int(pins["datasets"].split(".")[0]) >= 4  # 2.14.4 fails to import with current pyarrow


def test_ocr_lock_satisfies_core_and_ocr_extra_without_torch() -> None:
    pins = _lock(modal_app.OCR_IMAGE_LOCK)
    assert _unsatisfied(_not_modal(PROJECT["dependencies"]) + PROJECT["optional-dependencies"]["ocr"], pins) == []
    assert "torch" not in pins and "modal" not in pins
    # the version the manifest records for remote OCR is the lock's
    from colbert_modal import ocr

    assert ocr.lock_version() == pins["rapidocr"]
    # opencv-python-headless (needs no libGL, no apt install), not opencv-python
    assert "opencv-python-headless" in pins and "opencv-python" not in pins


def test_client_lock_satisfies_core_without_torch() -> None:
    pins = _lock(modal_app.CLIENT_IMAGE_LOCK)
    assert _unsatisfied(_not_modal(PROJECT["dependencies"]), pins) == []
    assert "torch" not in pins and "modal" not in pins


def test_images_install_exactly_the_locks_with_the_pinned_uv(modal_standin: StandIn) -> None:
    with modal_app.app.run():
        pass
    installs: dict[bytes, str] = {}
    for request in modal_standin.images:
        commands = list(request.image.dockerfile_commands)
        if not commands or commands[0] != "FROM base":
            continue  # a base image: Modal's (debian_slim's own pip/uv for itself) or the CUDA registry image
        context = {f.filename.lstrip("/"): f.data for f in request.image.context_files}
        for command in commands:
            if "pip install" not in command:
                continue
            # The pinned uv installs one requirements file, the lock, and nothing else.
            assert command.startswith("RUN /.uv/uv pip install "), command
            args = command.split(" pip install ", 1)[1].split()
            (i,) = [n for n, a in enumerate(args) if a == "--requirements"]
            assert [a for a in args if not a.startswith(("-", "$(", "/.uv/")) and a not in ("python)",)] == [], command
            (copy,) = [c for c in commands if c.startswith("COPY /") and c.endswith(" " + args[i + 1])]
            installs[context[copy.split()[1].lstrip("/")]] = command
            assert f"COPY --from=ghcr.io/astral-sh/uv:{UV_VERSION} /uv /.uv/uv" in commands
    assert set(installs) == {modal_app.IMAGE_LOCK.read_bytes(), modal_app.CLIENT_IMAGE_LOCK.read_bytes(),
                             modal_app.OCR_IMAGE_LOCK.read_bytes()}
    # The containers and the build steps after it run with the per-device extensions root.
    envs = [c for r in modal_standin.images for c in r.image.dockerfile_commands if c.startswith("ENV ")]
    assert f"ENV COLBERT_MODAL_TORCH_EXTENSIONS_ROOT={modal_app.TORCH_EXTENSIONS_ROOT}" in envs


# --- colbert-ai's extensions: one build folder per device ----------------------


@pytest.mark.parametrize(("cuda", "folder"), [(True, "cuda"), (False, "cpu")])
def test_extensions_dir_per_device(cuda: bool, folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("COLBERT_MODAL_TORCH_EXTENSIONS_ROOT", str(tmp_path / "ext"))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    _upstream._prepare_environment()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "ext" / folder)


WARM_UP = "import sys; from colbert_modal.remote import server; print('hits', server.warm_up(sys.argv[1]))"


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_second_warm_up_in_a_fresh_process_compiles_nothing(colbert_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "torch_extensions"
    seed = Path.home() / ".cache" / "torch_extensions" / f"py{sys.version_info.major}{sys.version_info.minor}_cpu"
    if seed.is_dir():  # saves a first compile of ~2 minutes; the test holds either way
        shutil.copytree(seed, root / "cpu")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    env.update(COLBERT_MODAL_TORCH_EXTENSIONS_ROOT=str(root), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")

    def warm_up() -> None:
        out = subprocess.run(
            [sys.executable, "-c", WARM_UP, str(colbert_checkpoint)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert out.returncode == 0 and "hits" in out.stdout, out.stderr[-3000:]

    warm_up()
    built = _mtimes(root)
    assert any(name.endswith(".so") for name in built) and all(name.startswith("cpu/") for name in built)
    warm_up()
    assert _mtimes(root) == built  # not one file compiled or rewritten
