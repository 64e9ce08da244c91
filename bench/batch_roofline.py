"""How much a batch of queries can gain over single queries: the query encoder against the machine's matmul.

    nice -n 10 .venv/bin/python bench/batch_roofline.py [--model base|minilm|DIR] [--threads 1 2]

Issue 22 asks for a batch of 64 queries to reach 4x the throughput of 64
single searches, and for a warm single search to take half of raw
RAGatouille's time. Both are bounded by the query encoder: it is most of a
warm search on a few thousand chunks (scoring 10k chunks is the rest,
already at the speed of its own matmul, see ``bench/maxsim_speed.py``), and
a batch can gain over singles only what the single query leaves unused of
the machine's matmul speed.

For ``--threads`` 1 and 2 this prints, in CPU seconds (``time.process_time``,
so a shared machine blurs it less than wall time):

- the lean query encoder (``engine/query_encoder.py``, the code a search
  runs) on one query and on a batch of 64, in ms per query (CPU seconds
  divided by the threads: the wall time on an idle machine) and GFLOP/s
  (``2 * non-embedding parameters * tokens``);
- torch's fp32 matmul of the encoder's largest shape for one query
  (32x768 @ 768x3072) and for a batch (2048x768 @ 768x3072);
- the most a batch of 64 can gain from the encoder: single ms / batch ms per
  query (the bound the "4x" target meets).

Nothing is downloaded: the checkpoint is written by
``colbert_modal.testing.write_tiny_checkpoint`` in the benchmark cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

SHAPES = {
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, lexical=False),
    "minilm": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, lexical=False),
}


def _checkpoint(model: str) -> Path:
    if model not in SHAPES:
        return Path(model)
    from _common import CACHE  # type: ignore[import-not-found]

    from colbert_modal.testing import write_tiny_checkpoint

    path = Path(CACHE) / f"ckpt-roofline-{model}"
    if not (path / "model.safetensors").exists():
        write_tiny_checkpoint(path, **SHAPES[model])  # type: ignore[arg-type]
    return path


def _cpu_best(fn, reps: int) -> float:
    fn()  # warm: first-call allocations and kernel choice
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


QUERIES = [
    "what does the airworthiness directive require for the wing spar",
    "penalty for late filing of the annual report",
    "Gesetz zur Regelung des Mindestlohns",
    "how many engines were inspected",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import torch

    from colbert_modal.engine.query_encoder import QueryEncoder

    path = _checkpoint(args.model)
    enc = QueryEncoder(path, precision="fp32", device="cpu")
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"))
    params = sum(t.numel() for k, t in weights.items() if "embeddings" not in k)
    singles = [QUERIES[i % len(QUERIES)] for i in range(8)]
    batch = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(64)]
    maxlen = enc.query_maxlen(batch)
    hidden = int(next(t for k, t in weights.items() if k.endswith("attention.self.query.weight")).shape[0])
    inter = int(next(t for k, t in weights.items() if k.endswith("intermediate.dense.weight")).shape[0])
    print(f"checkpoint {path.name}: {params / 1e6:.1f}M non-embedding parameters, query_maxlen {maxlen}, "
          f"hidden {hidden}, intermediate {inter}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'threads':>7} | {'single ms/q':>11} | {'single GF/s':>11} | {'batch64 ms/q':>12} | {'batch GF/s':>10} | "
          f"{'mm 1q GF/s':>10} | {'mm 64q GF/s':>11} | {'batch/single bound':>18}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            single_s = _cpu_best(lambda: [enc.encode([q]) for q in singles], args.reps) / len(singles)
            batch_s = _cpu_best(lambda: enc.encode(batch), max(2, args.reps // 2)) / len(batch)
            a1, a64, w = torch.randn(maxlen, hidden), torch.randn(64 * maxlen, hidden), torch.randn(hidden, inter)
            mm1 = _cpu_best(lambda a=a1, b=w: [a @ b for _ in range(20)], args.reps) / 20
            mm64 = _cpu_best(lambda a=a64, b=w: a @ b, args.reps)
        flop_q = 2 * params * maxlen
        # CPU seconds over `threads` cores: GFLOP/s of the whole process, as a wall-clock figure on an idle machine
        gf = lambda flop, s, n=threads: flop / (s / n) / 1e9  # noqa: E731
        print(f"{threads:>7} | {single_s * 1e3 / threads:>11.1f} | {gf(flop_q, single_s):>11.0f} | {batch_s * 1e3 / threads:>12.1f} | "
              f"{gf(flop_q, batch_s):>10.0f} | {gf(2 * maxlen * hidden * inter, mm1):>10.0f} | "
              f"{gf(2 * 64 * maxlen * hidden * inter, mm64):>11.0f} | {single_s / batch_s:>17.2f}x")


if __name__ == "__main__":
    main()
