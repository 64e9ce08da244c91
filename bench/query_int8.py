"""``precision="int8"`` (dynamic int8 query encoder) against float32: speed and top-10 agreement.

    nice -n 10 .venv/bin/python bench/query_int8.py --model CKPT --pdfs DIR [--root DIR]

Builds (once, float32) an exact index of the PDFs in ``--pdfs`` with the
checkpoint ``--model`` (use ``bench/real_weights.py``'s real-weights
checkpoint: agreement on random weights says little), then, for the
labelled questions in ``bench/queries/labelled.jsonl``:

- the lean query encoder's time for one query (median) and for a batch of
  64, float32 and int8;
- top-10 agreement of int8 searches with float32 searches (mean overlap of
  the chunk ids), and how often the first hit is the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pdfs", required=True)
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "cm-query-int8"))
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    import torch

    from colbert_modal import ColbertIndexer
    from colbert_modal.engine.query_encoder import QueryEncoder

    kwargs = {"model": a.model, "index_root": a.root, "progress": False, "backend": "exact"}
    t0 = time.perf_counter()
    report = ColbertIndexer("int8", precision="fp32", **kwargs).index([a.pdfs])
    print(f"index: {report}  ({time.perf_counter() - t0:.1f} s)")
    questions = [json.loads(x)["question"] for x in (REPO / "bench/queries/labelled.jsonl").read_text().splitlines() if x]
    batch = (questions * 2)[:64]
    print(f"{len(questions)} labelled questions; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for precision in ("fp32", "int8"):
        enc = QueryEncoder(a.model, precision=precision, device="cpu")
        enc.encode(questions[:1])
        one = []
        for q in questions[: a.reps]:
            t0 = time.perf_counter()
            enc.encode([q])
            one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        enc.encode(batch)
        many = time.perf_counter() - t0
        print(f"  {precision}: one query {statistics.median(one) * 1e3:6.1f} ms   batch of 64 {many * 1e3:7.1f} ms")
    hits = {p: ColbertIndexer("int8", precision=p, **kwargs).search_batch(questions, k=10) for p in ("fp32", "int8")}
    overlap, first = [], []
    for a_, b_ in zip(hits["fp32"], hits["int8"], strict=True):
        ia, ib = [r.chunk_id for r in a_][:10], [r.chunk_id for r in b_][:10]
        overlap.append(len(set(ia) & set(ib)) / max(1, len(ia)))
        first.append(ia[:1] == ib[:1])
    print(f"top-10 agreement int8 vs fp32: {statistics.mean(overlap):.3f} (min {min(overlap):.2f}); "
          f"same first hit {sum(first)}/{len(first)}")


if __name__ == "__main__":
    main()
