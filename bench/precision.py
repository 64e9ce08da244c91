"""bfloat16 vs float32 encoding on a CPU: encoder speed, and what it does to rankings.

    nice -n 10 .venv/bin/python bench/precision.py --speed              # BERT-base forward, 2 threads
    nice -n 10 .venv/bin/python bench/precision.py --quality --queries 256

``--speed``: the BERT-base-sized checkpoint's transformer forward (no
tokenizer) for one query ([1, 32] tokens), a batch of 64 queries ([64, 32])
and a batch of 32 chunks ([32, 259]), float32 vs ``torch.autocast("cpu",
bfloat16)``. bfloat16 is only fast where oneDNN can use AMX tiles
(``torch.cpu._is_amx_tile_supported()``, printed).

``--quality``: the chunks of six real PDFs (the compare.py set), random
keyword queries; exact and PLAID indexes built by colbert_modal's ``Engine``
in float32 and in bfloat16; top-10 overlap of each with the float32 exact
MaxSim ranking (mean over queries, with its standard error). float32 PLAID
is what raw ragatouille builds (same algorithm, identical embeddings).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import checkpoint, make_queries, pick_pdfs  # noqa: E402
from scaling import base_chunks  # noqa: E402

PDFS = ["multicolumn.pdf", "pdflatex-4-pages.pdf", "lorem-ipsum.pdf", "scotus-transcript-p1.pdf",
        "minimal-document.pdf", "google-doc-document.pdf"]


def speed(ckpt: str) -> None:
    import torch

    from colbert_modal.engine import Engine, cpu_has_fast_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, AMX: {cpu_has_fast_bf16()}")
    bert = Engine(ckpt, precision="fp32").checkpoint.bert
    vocab = bert.config.vocab_size

    def run(bs: int, length: int, dtype: torch.dtype | None, reps: int = 3) -> float:
        ids = torch.randint(5, vocab, (bs, length))
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            for i in range(reps + 1):
                if i == 1:
                    t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                    bert(ids, attention_mask=mask)
        return (time.perf_counter() - t0) / reps

    for bs, length, what in [(1, 32, "one query"), (64, 32, "64 queries"), (32, 259, "32 chunks of 256 tokens")]:
        a, b = run(bs, length, None), run(bs, length, torch.bfloat16)
        print(f"{what:26s} [{bs:2d}, {length:3d}]  float32 {a * 1000:8.1f} ms   bfloat16 {b * 1000:8.1f} ms   {a / b:.2f}x")


def quality(ckpt: str, n_queries: int) -> None:
    from colbert_modal.engine import Engine

    pdfs = [p for p in pick_pdfs(None) if p.name in PDFS]
    texts = base_chunks(pdfs, ckpt, 256)
    queries = make_queries(texts, ckpt, n_queries)
    print(f"{len(pdfs)} PDFs, {len(texts)} chunks, {len(queries)} queries")
    work = Path(tempfile.mkdtemp(prefix="cm-precision-"))
    ranked = {}
    for precision in ("fp32", "bf16"):
        eng = Engine(ckpt, precision=precision)
        for backend in ("exact", "plaid"):
            dest = work / f"{precision}-{backend}"
            t0 = time.perf_counter()
            if backend == "exact":
                eng.build_exact(texts, dest, max_tokens=256)
            else:
                eng.build_plaid(texts, [str(i) for i in range(len(texts))], dest, max_tokens=256)
            build = time.perf_counter() - t0
            hits = eng.open(dest, backend, texts).search(queries, 10)
            ranked[(precision, backend)] = [[i for i, _ in h] for h in hits]
            print(f"  built {precision} {backend} in {build:.1f}s", flush=True)
    ref = ranked[("fp32", "exact")]
    for (precision, backend), got in ranked.items():
        per = [len(set(a) & set(b)) / 10 for a, b in zip(got, ref)]
        se = statistics.stdev(per) / len(per) ** 0.5
        print(f"{precision} {backend:5s}  top-10 overlap with float32 exact MaxSim: "
              f"{statistics.mean(per):.4f} +- {se:.4f} (s.e.)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--queries", type=int, default=256)
    a = ap.parse_args()
    ckpt = str(checkpoint(a.model))
    _common.prefetch([Path(ckpt)])
    if a.speed or not a.quality:
        speed(ckpt)
    if a.quality:
        quality(ckpt, a.queries)


if __name__ == "__main__":
    main()
