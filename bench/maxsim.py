"""Exact-backend MaxSim alone, on synthetic embeddings: ``ExactIndex`` at a git revision vs the working tree.

    nice -n 10 .venv/bin/python bench/maxsim.py --chunks 2000 10000 --rev 0ff88f5

Random unit vectors stand in for token embeddings (150-259 tokens per chunk,
dim 128, stored float16 as the exact backend stores them), so no model is
loaded and sizes up to the ``auto`` threshold (10,000 chunks) take seconds.
Prints, per size and version: open time, one query (32 query vectors,
median of 5), a batch of 64, the largest score difference from the first
version and top-10 agreement. ``0ff88f5`` is the flat float32 +
``index_reduce`` layout; the working tree groups chunks by length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class _Engine:
    """What ExactIndex reads from its engine (the scoring needs no model)."""

    device = "cpu"
    dim = 128
    resolved_precision = "fp32"


def _engine_module(rev: str | None):
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    from _common import engine_source, load_engine

    if rev is None:
        return load_engine(None)
    return load_engine(engine_source(rev, Path(tempfile.mkdtemp())), f"colbert_modal._engine_{rev}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", nargs="+", type=int, default=[2000, 10000])
    ap.add_argument("--rev", default="0ff88f5")
    a = ap.parse_args()
    import numpy as np
    import torch

    warnings.simplefilter("ignore")
    versions = [(f"{a.rev}", _engine_module(a.rev)), ("working tree", _engine_module(None))]
    for n in a.chunks:
        rng = np.random.default_rng(0)
        lens = rng.integers(150, 260, n).astype(np.int32)
        d = Path(tempfile.mkdtemp(prefix="cm-maxsim-"))
        E = rng.standard_normal((int(lens.sum()), 128)).astype(np.float32)
        E /= np.linalg.norm(E, axis=1, keepdims=True)
        np.save(d / "embeddings.npy", E.astype(np.float16))
        np.save(d / "doclens.npy", lens)
        del E
        Q1 = torch.nn.functional.normalize(torch.randn(1, 32, 128), dim=-1)
        Q64 = torch.nn.functional.normalize(torch.randn(64, 32, 128), dim=-1)
        print(f"{n} chunks, {int(lens.sum())} tokens")
        ref = None
        for name, mod in versions:
            t0 = time.perf_counter()
            idx = mod.ExactIndex(_Engine(), d)
            opened = time.perf_counter() - t0
            idx._scores(Q1)
            singles = []
            for _ in range(5):
                t0 = time.perf_counter()
                idx._scores(Q1)
                singles.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s = idx._scores(Q64)
            batch = time.perf_counter() - t0
            ref = s if ref is None else ref
            same = (s.topk(10).indices == ref.topk(10).indices).float().mean().item()
            print(f"  {name:14s} open {opened:5.2f}s  one query {statistics.median(singles) * 1000:7.1f} ms"
                  f"  batch of 64 {batch:6.2f}s  max |diff| {float((s - ref).abs().max()):.2e}  same top-10 {same:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
