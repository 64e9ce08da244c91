"""Exact vs PLAID backend at one collection size: build time, single-query latency, batch, agreement.

    nice -n 10 .venv/bin/python bench/exact_vs_plaid.py --model tiny --chunks 2000
    nice -n 10 .venv/bin/python bench/exact_vs_plaid.py --model tiny --chunks 10000 --kmeans-niters 2

The chunks of the real PDFs extended with word-shuffled copies (as
scaling.py), both indexes built by colbert_modal's ``Engine`` in float32 in
this one process, then 30 timed single queries (p50/p95) and one batch of
64. With the tiny model query encoding costs ~3 ms, so the latencies are the
backends' own search cost; add the model's query encoding (~75 ms for a
BERT-base-sized model on 2 cores) for full figures. PLAID k-means dominates
its build: colbert-ai clusters every token vector of collections under ~30k
chunks (2,000 chunks: 0.4M vectors into 8,192 centroids).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import checkpoint, make_queries, measure_search, overlap_at_k, pick_pdfs  # noqa: E402
from scaling import corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--backends", nargs="+", default=["exact", "plaid"], choices=["exact", "plaid"])
    ap.add_argument("--kmeans-niters", type=int, default=None,
                    help="cap PLAID's k-means iterations (ragatouille: 20 below 50k passages); only to make a"
                         " large CPU build fit a session for search-latency figures: centroids get worse")
    a = ap.parse_args()
    if a.kmeans_niters is not None:
        import colbert.indexing.collection_indexer as ci

        from colbert_modal.engine import clustering

        faiss_kmeans, ours = ci.compute_faiss_kmeans, clustering.kmeans
        ci.compute_faiss_kmeans = lambda dim, k, niters, *rest: faiss_kmeans(dim, k, min(niters, a.kmeans_niters), *rest)
        # the PLAID build patches call clustering.kmeans
        clustering.kmeans = lambda sample, k, niters, **kw: ours(sample, k, min(niters, a.kmeans_niters), **kw)

    from colbert_modal.engine import Engine

    ckpt = str(checkpoint(a.model))
    _common.prefetch([Path(ckpt)])
    texts = corpus(pick_pdfs(None), ckpt, a.chunks, 256)
    queries = make_queries(texts, ckpt, 64)
    eng = Engine(ckpt, precision="fp32")
    work = Path(tempfile.mkdtemp(prefix="cm-evp-"))
    ranked = {}
    for backend in a.backends:
        t0 = time.perf_counter()
        if backend == "exact":
            eng.build_exact(texts, work / backend, max_tokens=256)
        else:
            eng.build_plaid(texts, [str(i) for i in range(len(texts))], work / backend, max_tokens=256)
        build = time.perf_counter() - t0
        idx = eng.open(work / backend, backend, texts)
        m = measure_search(lambda q, idx=idx: [i for i, _ in idx.search([q], 10)[0]],
                           lambda qs, idx=idx: [[i for i, _ in h] for h in idx.search(qs, 10)], queries, 30)
        ranked[backend] = m["ranked"]
        print(f"{backend:5s} {len(texts)} chunks: build {build:7.1f}s  single p50 {m['warm_p50_ms']:6.1f} ms"
              f"  p95 {m['warm_p95_ms']:6.1f} ms  batch of 64 {m['batch_64_s']:5.2f}s", flush=True)
    if len(ranked) == 2:
        print(f"PLAID top-10 overlap with exact: {overlap_at_k(ranked['plaid'], ranked['exact']):.3f}")
    t0 = time.perf_counter()
    for _ in range(10):
        eng.encode_queries(queries[:1])
    print(f"query encoding alone: {(time.perf_counter() - t0) * 100:.1f} ms")


if __name__ == "__main__":
    main()
