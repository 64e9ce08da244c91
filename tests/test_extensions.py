"""colbert-ai's C++ extension loads: a lock file left by a killed compile does not hang the next load.

No test here compiles anything (a compile takes minutes): torch's compile
and its import of the built library are stood in for; its lock file
handling (``FileBaton``) is the real one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from colbert_modal.engine import extensions


def _plant_lock(folder: Path, age: float = 60.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    lock.write_bytes(b"")
    old = time.time() - age
    os.utime(lock, (old, old))
    return lock


def _run_with_timeout(fn, timeout: float):
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return worker.is_alive(), out


def test_colbert_extension_load_removes_a_stale_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The load colbert-ai makes at a first PLAID search, after a process was killed mid-compile."""
    import torch.utils.cpp_extension as cpp

    from colbert_modal.engine import import_ragatouille
    from colbert_modal.engine._upstream import quiet

    import_ragatouille()
    with quiet():  # as every search does: upstream modules get their patches
        from colbert.search.strided_tensor import StridedTensor
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    lock = _plant_lock(tmp_path / "ext" / "segmented_lookup_cpp")
    built: list[str] = []
    monkeypatch.setattr(cpp, "_write_ninja_file_and_build_library", lambda **kw: built.append(kw["name"]))
    stub = types.SimpleNamespace(segmented_lookup_cpp=lambda *a: None)
    monkeypatch.setattr(cpp, "_import_module_from_library", lambda *a, **kw: stub)
    # torch versions an extension per build folder: later real loads in this process must not see this one
    monkeypatch.setattr(cpp.JIT_EXTENSION_VERSIONER, "entries", dict(cpp.JIT_EXTENSION_VERSIONER.entries))
    # the class as before its first load; whatever the load sets is undone after the test
    monkeypatch.setattr(StridedTensor, "segmented_lookup", None, raising=False)
    monkeypatch.setattr(StridedTensor, "loaded_extensions", None, raising=False)
    monkeypatch.delattr(StridedTensor, "loaded_extensions")

    caplog.set_level(logging.INFO, logger="colbert_modal")
    hung, out = _run_with_timeout(lambda: StridedTensor.try_load_torch_extensions(False), timeout=30)
    try:
        assert not hung, "the load still waits on the lock file a killed process left"
    finally:
        lock.unlink(missing_ok=True)  # lets a hung load end
    assert "error" not in out, out.get("error")
    # torch names it segmented_lookup_cpp_v<n> where this process loaded it from another folder before
    assert len(built) == 1 and built[0].startswith("segmented_lookup_cpp")
    assert StridedTensor.segmented_lookup is stub.segmented_lookup_cpp
    assert not lock.exists()
    removed = [r for r in caplog.records if "stale torch extension lock" in r.getMessage()]
    assert removed and removed[0].levelno == logging.WARNING and str(lock) in removed[0].getMessage()
    assert any("first run, about" in r.getMessage() and "segmented_lookup_cpp" in r.getMessage() for r in caplog.records)


def test_a_lock_a_live_process_holds_open_is_waited_for(tmp_path: Path) -> None:
    folder = tmp_path / "ext" / "filter_pids_cpp"
    lock = _plant_lock(folder)
    if extensions.in_use(str(folder)) is None:
        pytest.skip("no /proc: processes cannot be inspected here")
    with open(lock, "rb"):  # torch's compiling process keeps its lock file open
        assert extensions.in_use(str(folder)) is True
        assert extensions.clear_stale_lock(str(folder), wait=False) is False
        assert lock.exists()
    assert extensions.in_use(str(folder)) is False
    assert extensions.clear_stale_lock(str(folder), wait=False) is True
    assert not lock.exists()


def test_a_compiler_working_in_the_folder_is_waited_for(tmp_path: Path) -> None:
    folder = tmp_path / "ext" / "decompress_residuals_cpp"
    lock = _plant_lock(folder)
    if extensions.in_use(str(folder)) is None:
        pytest.skip("no /proc: processes cannot be inspected here")
    # ninja (and the compiler) run in the extension's folder; its parent may be gone already
    ninja = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=folder)
    try:
        assert extensions.in_use(str(folder)) is True
        assert extensions.clear_stale_lock(str(folder), wait=False) is False
    finally:
        ninja.kill()
        ninja.wait()
    assert extensions.clear_stale_lock(str(folder), wait=False) is True and not lock.exists()


def test_a_fresh_lock_is_given_time(tmp_path: Path) -> None:
    """torch creates the lock file a moment before its compiler starts: a young one is not removed at once."""
    folder = tmp_path / "ext" / "segmented_maxsim_cpp"
    lock = _plant_lock(folder, age=0.0)
    assert extensions.clear_stale_lock(str(folder), wait=False) is False and lock.exists()
    hung, out = _run_with_timeout(lambda: extensions.clear_stale_lock(str(folder)), timeout=10 * extensions.STALE_AFTER_S)
    assert not hung and out.get("value") is True and not lock.exists()


def test_colbert_modal_processes_compile_one_at_a_time(tmp_path: Path) -> None:
    """Two loads of one extension (threads here, processes alike): the second waits for the first."""
    events: list[str] = []

    def slow_load(name: str, sources=(), **kwargs):
        events.append(f"start {threading.current_thread().name}")
        time.sleep(0.5)
        events.append(f"end {threading.current_thread().name}")
        return name

    load = extensions.guarded(slow_load)
    folder = tmp_path / "ext" / "one"
    threads = [
        threading.Thread(target=load, args=("one", ["x.cpp"]), kwargs={"build_directory": str(folder)}, name=n)
        for n in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    first = events[0].split()[1]
    assert events[:2] == [f"start {first}", f"end {first}"] and len(events) == 4
    assert (folder / "colbert_modal.owner").exists()
