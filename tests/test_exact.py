"""The exact index's files: .npy headers read without ``ast`` (safe when threads load at once)."""

from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from colbert_modal.engine import exact
from colbert_modal.errors import EngineError


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 128), np.float16),
        np.arange(12, dtype=np.int32),
        np.random.default_rng(0).random((5, 3)).astype(np.float16),
        np.zeros((0,), np.int32),
        np.array(5, dtype=np.int64),
        np.zeros((3, 0), np.float32),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # not ours: numpy's own reader
    ],
)
def test_read_npy_matches_np_load(tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", array)
    for mmap in (False, True):
        got = exact.read_npy(tmp_path / "a.npy", mmap=mmap)
        want = np.load(tmp_path / "a.npy", mmap_mode="r" if mmap else None)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "embeddings.npy", np.ones((10, 4), np.float16))
    np.save(tmp_path / "doclens.npy", np.array([4, 6], np.int32))
    data = (tmp_path / "embeddings.npy").read_bytes()
    (tmp_path / "embeddings.npy").write_bytes(data[:-8])
    with pytest.raises(EngineError, match=r"embeddings\.npy"):
        exact.load(tmp_path)


class _Garbage:
    """A reference cycle whose finalizer releases the GIL and leaves the next collection one of its own.

    Big programs (torch, colbert-ai) have such garbage: collections that run
    finalizers, at any allocation, in any thread.
    """

    stop = False

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        if not _Garbage.stop:
            _Garbage()
        time.sleep(0)


def test_threads_load_exact_indexes_while_the_collector_runs_finalizers(tmp_path: Path) -> None:
    """CPython 3.11's AST builder shares its recursion counter between threads (python/cpython#106905):
    np.load's header parser (``ast.literal_eval``) raised ``SystemError: AST constructor recursion depth
    mismatch`` when a collection ran a finalizer in the middle of it and another thread parsed meanwhile."""
    np.save(tmp_path / "embeddings.npy", np.ones((10, 4), np.float16))
    np.save(tmp_path / "doclens.npy", np.array([4, 6], np.int32))
    errors: list[BaseException] = []
    loads = [0]
    deadline = time.monotonic() + 4.0

    def work() -> None:
        while time.monotonic() < deadline and not errors:
            try:
                embs, doclens = exact.load(tmp_path)
                assert embs.shape == (10, 4) and doclens.tolist() == [4, 6]
            except BaseException as exc:
                errors.append(exc)
            loads[0] += 1

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(100)
    _Garbage.stop = False
    _Garbage()
    threads = [threading.Thread(target=work) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        _Garbage.stop = True
        gc.collect()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} failed loads of {loads[0]}: {errors[0]!r}"
    assert loads[0] > 100
