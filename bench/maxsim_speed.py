"""Exact MaxSim at the machine's speed: the scoring's GFLOP/s next to torch's own matmul, in one run.

    nice -n 10 .venv/bin/python bench/maxsim_speed.py [--chunks 10000] [--model DIR]

An exact index of ``--chunks`` chunks (150-259 tokens, ~205 on average, dim
128) is written in the exact index's on-disk format (float16
``embeddings.npy`` + ``doclens.npy``) from random unit vectors: nothing is
encoded. Prints

- ``ExactIndex._scores`` for one query (32 query vectors) and for a batch of
  64, in GFLOP/s (``2 * query_tokens * total_doc_tokens * dim`` per query,
  padding not counted);
- the single-query scoring alternated with ``torch.mm`` over the very blocks
  it multiplies (the fairest ratio on a machine whose load moves);
- torch's own matmul on this CPU in the same run: ``torch.mm`` of a block of
  the same embeddings against 32 (one query) and 2048 (64 queries) columns,
  float32 and bfloat16, and a square-ish 4096x768x3072 for reference;
- the split of a warm single ``search``: encode (the lean query encoder of
  ``--model``, or of the tiny test checkpoint), score, top-k and shaping.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def _times(fn, reps: int, *, warm: bool = True) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` (after one untimed call where ``warm``)."""
    if warm:
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _best(fn, reps: int, *, warm: bool = True) -> float:
    return min(_times(fn, reps, warm=warm))


def _median(fn, reps: int) -> float:
    return statistics.median(_times(fn, reps))


class _Engine:
    """What ExactIndex reads from its engine; queries from the lean encoder where one is given."""

    device = "cpu"
    dim = 128

    def __init__(self, qenc=None) -> None:
        self.qenc = qenc

    def encode_queries(self, queries):
        return self.qenc.encode(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default=None, help="checkpoint for the search split (default: the tiny test one)")
    a = ap.parse_args()
    import numpy as np
    import torch

    from colbert_modal.engine.exact import ExactIndex
    from colbert_modal.engine.query_encoder import QueryEncoder

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    rng = np.random.default_rng(0)
    lens = rng.integers(150, 260, a.chunks).astype(np.int32)
    tokens = int(lens.sum())
    d = Path(tempfile.mkdtemp(prefix="cm-maxsim-speed-"))
    E = rng.standard_normal((tokens, 128), dtype=np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    np.save(d / "embeddings.npy", E.astype(np.float16))
    np.save(d / "doclens.npy", lens)
    del E
    model = a.model
    if model is None:
        from colbert_modal.testing import write_tiny_checkpoint

        model = str(Path(tempfile.mkdtemp(prefix="cm-tiny-")) / "ckpt")
        write_tiny_checkpoint(model)
    qenc = QueryEncoder(model, precision="fp32", device="cpu")
    t0 = time.perf_counter()
    idx = ExactIndex(_Engine(qenc), d)
    print(f"{a.chunks} chunks, {tokens} tokens (mean {tokens / a.chunks:.0f}); opened in {time.perf_counter() - t0:.2f} s")
    padded = sum(int(g.shape[0] * g.shape[1]) for _, g in idx._groups)
    print(f"  padded rows held: {padded} (+{100 * (padded / tokens - 1):.1f}%)")

    Q1 = torch.nn.functional.normalize(torch.randn(1, 32, 128), dim=-1)
    Q64 = torch.nn.functional.normalize(torch.randn(64, 32, 128), dim=-1)
    flop_q = 2 * 32 * tokens * 128  # per query
    with torch.inference_mode():
        t1 = _median(lambda: idx._scores(Q1), a.reps)
        t0 = time.perf_counter()
        idx._scores(Q64)  # once: warm already, and the longest part of the run
        t64 = time.perf_counter() - t0
    print("\nExactIndex._scores (float32)")
    print(f"  one query   {t1 * 1e3:8.1f} ms  {flop_q / t1 / 1e9:7.1f} GFLOP/s")
    print(f"  64 queries  {t64 * 1e3:8.1f} ms  {64 * flop_q / t64 / 1e9:7.1f} GFLOP/s  ({64 * t1 / t64:.1f}x 64 singles)")

    # on a shared machine the load moves between measurements: also time the scoring and torch.mm
    # over the very blocks it multiplies, alternately, so that both see the same load
    m = 32
    blocks = []
    for _, g in idx._groups:
        step = max(1, idx.block_elements // (g.shape[1] * m))
        blocks += [g[s : s + step].reshape(-1, 128) for s in range(0, g.shape[0], step)]
    Qt = Q1.reshape(m, 128).T.contiguous()
    paired: dict[str, list[float]] = {"_scores": [], "torch.mm alone": []}
    with torch.inference_mode():
        for _ in range(a.reps):
            for key, fn in (("_scores", lambda: idx._scores(Q1)), ("torch.mm alone", lambda: [b @ Qt for b in blocks])):
                t0 = time.perf_counter()
                fn()
                paired[key].append(time.perf_counter() - t0)
    print("\none query, alternated with torch.mm of the same blocks (medians)")
    for key, ts in paired.items():
        t = statistics.median(ts)
        print(f"  {key:15s} {t * 1e3:8.1f} ms  {flop_q / t / 1e9:7.1f} GFLOP/s")

    print("\ntorch.mm on this CPU (best of runs)")
    rows = idx.block_elements // 32  # one block of a single query's scoring
    D = torch.nn.functional.normalize(torch.randn(rows, 128), dim=-1)
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        Dd = D.to(dt)
        for cols in (32, 2048):
            Qt = torch.randn(128, cols).to(dt)
            r = rows if cols == 32 else rows // 64  # the same output size
            t = _best(lambda Dd=Dd, Qt=Qt, r=r: torch.mm(Dd[:r], Qt), a.reps)
            print(f"  {name} [{r}x128] x [128x{cols}]  {2 * r * 128 * cols / t / 1e9:7.1f} GFLOP/s")
        x = torch.randn(4096, 768).to(dt)
        w = torch.randn(768, 3072).to(dt)
        t = _best(lambda x=x, w=w: torch.mm(x, w), 1, warm=False)  # once: ~20 s where bfloat16 is emulated
        print(f"  {name} [4096x768] x [768x3072]  {2 * 4096 * 768 * 3072 / t / 1e9:7.1f} GFLOP/s")

    print("\nwarm single search, split (median of runs)")
    q = ["what does the report say about renewable energy targets"]
    with torch.inference_mode():
        enc = _median(lambda: qenc.encode(q), a.reps)
        Q = qenc.encode(q)
        score = _median(lambda: idx._scores(Q), a.reps)
        S = idx._scores(Q)
        top = _median(lambda: torch.topk(S, 10, dim=1), a.reps)
        total = _median(lambda: idx.search(q, 10), a.reps)
    print(f"  encode {enc * 1e3:7.1f} ms  score {score * 1e3:7.1f} ms  top-k {top * 1e3:6.2f} ms  "
          f"rest (shaping, checks) {max(0.0, total - enc - score - top) * 1e3:6.2f} ms  = search {total * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
