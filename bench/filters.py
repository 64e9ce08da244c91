"""Search within a subset (``where=``): exact and PLAID, filter evaluation.

    nice -n 10 .venv/bin/python bench/filters.py exact  [--chunks 10000]        # 1% filter vs none, exact backend
    nice -n 10 .venv/bin/python bench/filters.py eval   [--chunks 100000]       # filter evaluation time, bytes/chunk
    nice -n 10 .venv/bin/python bench/filters.py build-plaid [--chunks 20000]   # (long on a CPU) PLAID + exact indexes
    nice -n 10 .venv/bin/python bench/filters.py plaid  [--chunks 20000]        # filtered PLAID vs exact over the subset

``build-plaid`` writes both indexes of the same chunks under
``bench/results/filters-<model>-<chunks>/`` (git-ignored) so that ``plaid``
can be rerun without rebuilding. Chunks are those of ``bench/scaling.py``
(the real PDFs' chunks extended with word-shuffled copies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import CACHE, checkpoint, make_queries, pick_pdfs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def ckpt_path(model: str) -> str:
    if model == "real":
        path = CACHE / "ckpt-real"
        if not (path / "artifact.metadata").exists():
            raise SystemExit(f"no real-weights checkpoint at {path} (bench/real_weights.py writes it)")
        return str(path)
    return str(checkpoint(model))


def cap_kmeans(niters: int | None) -> None:
    if niters is None:
        return
    import colbert.indexing.collection_indexer as ci

    from colbert_modal.engine import clustering

    faiss_kmeans, ours = ci.compute_faiss_kmeans, clustering.kmeans
    ci.compute_faiss_kmeans = lambda dim, k, n, *rest: faiss_kmeans(dim, k, min(n, niters), *rest)
    clustering.kmeans = lambda sample, k, n, **kw: ours(sample, k, min(n, niters), **kw)


def build_plaid(a: argparse.Namespace) -> None:
    from scaling import corpus

    from colbert_modal.engine import Engine

    cap_kmeans(a.kmeans_niters)
    ckpt = ckpt_path(a.model)
    work = RESULTS / f"filters-{a.model}-{a.chunks}"
    work.mkdir(parents=True, exist_ok=True)
    texts = corpus(pick_pdfs(None), ckpt, a.chunks, a.max_tokens)
    (work / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    eng = Engine(ckpt, precision="fp32")
    t0 = time.perf_counter()
    eng.build_exact(texts, work / "exact", max_tokens=a.max_tokens)
    t1 = time.perf_counter()
    print(f"exact build {t1 - t0:.1f}s", flush=True)
    eng.build_plaid(texts, [str(i) for i in range(len(texts))], work / "plaid", max_tokens=a.max_tokens)
    t2 = time.perf_counter()
    print(f"plaid build {t2 - t1:.1f}s", flush=True)
    (work / "built.json").write_text(json.dumps({"exact_s": t1 - t0, "plaid_s": t2 - t1, "max_tokens": a.max_tokens,
                                                  "kmeans_niters": a.kmeans_niters}), encoding="utf-8")


def slice_exact(src: Path, dest: Path, n: int) -> None:
    """An exact index of the first ``n`` chunks of the exact index in ``src`` (no encoding)."""
    import numpy as np

    if (dest / "exact.json").exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    embs = np.load(src / "embeddings.npy", mmap_mode="r")
    lens = np.load(src / "doclens.npy")[:n]
    rows = int(lens.sum())
    np.save(dest / "embeddings.npy", np.ascontiguousarray(embs[:rows]))
    np.save(dest / "doclens.npy", lens)
    (dest / "exact.json").write_text(json.dumps({"dim": int(embs.shape[1]), "chunks": n, "tokens": rows}))


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_exact(a: argparse.Namespace) -> None:
    """Exact backend: a 1% filter (scattered chunks) vs no filter, same queries, in one process."""
    import numpy as np

    from colbert_modal.engine import Engine

    ckpt = ckpt_path(a.model)
    built = RESULTS / f"filters-{a.model}-20000"
    texts = json.loads((built / "texts.json").read_text())[: a.chunks]
    dest = RESULTS / f"filters-{a.model}-exact-{a.chunks}"
    slice_exact(built / "exact", dest, a.chunks)
    eng = Engine(ckpt, precision="fp32")
    index = eng.open(dest, "exact", texts)
    queries = make_queries(texts, ckpt, 16)
    q_enc = timed(lambda: [eng.encode_queries([q]) for q in queries[:8]], 3) / 8
    # the query embeddings are computed once: the figures are the search's own cost
    cache = {q: eng.encode_queries([q]) for q in queries}
    encode = eng.encode_queries
    eng.encode_queries = lambda qs: cache[qs[0]] if len(qs) == 1 else encode(qs)  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    rows = []
    for frac in (1.0, 0.10, 0.01):
        subset = None if frac == 1.0 else np.sort(rng.choice(a.chunks, int(a.chunks * frac), replace=False))
        one = timed(lambda s=subset: [index.search([q], 10, s) for q in queries[:8]], 5) / 8
        batch = timed(lambda s=subset: index.search(queries, 10, s), 3)
        rows.append((frac, one, batch))
    print(f"exact backend, {a.chunks} chunks ({a.model} checkpoint, {a.max_tokens}-token chunks), top-10:")
    print(f"  query encoding alone: {1000 * q_enc:.2f} ms (not in the figures below: one query is scored on"
          " embeddings encoded beforehand; a batch includes its encoding)")
    for frac, one, batch in rows:
        print(f"  filter {frac:6.1%}: one query {1000 * one:7.2f} ms (speed-up {rows[0][1] / one:5.1f}x), "
              f"batch of {len(queries)} {1000 * batch:7.1f} ms (speed-up {rows[0][2] / batch:5.1f}x)")


def bench_eval(a: argparse.Namespace) -> None:
    """Filter evaluation over ``a.chunks`` chunks' metadata: time per filter and resident bytes per chunk."""
    import tracemalloc

    from colbert_modal.filters import ChunkColumns, parse_where
    from colbert_modal.records import Chunk

    per_file = 100
    chunks = [
        Chunk(id=f"d{f}-{i}", document_id=f"d{f}", source=f"/data/{'reports' if f % 3 else 'notes'}/f{f:05d}.pdf",
              position=i, pages=[1 + i // 3] if i % 3 else [1 + i // 3, 2 + i // 3], text="", n_tokens=1,
              metadata={"file_name": f"f{f:05d}.pdf", "type": "pdf", "page_count": 40, "year": 2000 + f % 25,
                        "lang": ["en", "de", "fr"][f % 3], "tags": [f"t{f % 7}", f"t{f % 11}"]})
        for f in range(a.chunks // per_file) for i in range(per_file)
    ]
    t0 = time.process_time()
    cols = ChunkColumns(chunks)
    build = time.process_time() - t0
    tracemalloc.start()
    cols = ChunkColumns(chunks)
    retained, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"filter columns over {len(chunks)} chunks ({len(cols.sources)} files): built in {1000 * build:.0f} ms CPU, "
          f"{cols.nbytes / len(chunks):.1f} bytes/chunk in arrays, {retained / len(chunks):.1f} bytes/chunk "
          "retained in all (tracemalloc, incl. per-file combinations)")
    for where in ({"year": 2023}, {"year": {"$gte": 2010, "$lt": 2020}, "lang": ["en", "de"]},
                  {"source": {"$glob": "reports/*.pdf"}}, {"page": {"$gte": 10, "$lte": 20}},
                  {"tags": "t3", "page": 1, "source": {"$glob": "*.pdf"}}):
        conds = parse_where(where)
        n = len(cols.select(conds))
        sec = timed(lambda c=conds: cols.select(c), 20)
        c0 = time.process_time()
        for _ in range(20):
            cols.select(conds)
        cpu = (time.process_time() - c0) / 20
        print(f"  {json.dumps(where):70s} {n:6d} chunks match  {1000 * sec:6.2f} ms wall, {1000 * cpu:6.2f} ms CPU")


def bench_plaid(a: argparse.Namespace) -> None:
    """Filtered PLAID top-10 vs exact MaxSim over the same subset (both indexes of the same chunks)."""
    import numpy as np

    from colbert_modal.engine import Engine, PlaidIndex
    from _common import overlap_at_k

    ckpt = ckpt_path(a.model)
    work = RESULTS / f"filters-{a.model}-{a.chunks}"
    if not (work / "built.json").exists():
        raise SystemExit(f"run `bench/filters.py build-plaid --chunks {a.chunks}` first")
    texts = json.loads((work / "texts.json").read_text())
    print(f"built: {(work / 'built.json').read_text()}")
    eng = Engine(ckpt, precision="fp32")
    exact = eng.open(work / "exact", "exact", texts)
    plaid = eng.open(work / "plaid", "plaid", texts)
    assert isinstance(plaid, PlaidIndex)
    queries = make_queries(texts, ckpt, a.queries)
    fallbacks = [0]
    exhaustive = plaid._exhaustive

    def counting(*args):  # type: ignore[no-untyped-def]
        fallbacks[0] += 1
        return exhaustive(*args)

    plaid._exhaustive = counting  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    ref = [[p for p, _ in h] for h in exact.search(queries, 10)]
    t0 = time.perf_counter()
    got = [[p for p, _ in plaid.search([q], 10)[0]] for q in queries]
    t_all = (time.perf_counter() - t0) / len(queries)
    print(f"PLAID, {len(texts)} chunks ({a.model} checkpoint), {len(queries)} queries, top-10 agreement with exact MaxSim:")
    print(f"  no filter: {overlap_at_k(got, ref):.3f}  ({1000 * t_all:.0f} ms/query)")
    for frac in (0.5, 0.05, 0.005):
        subset = np.sort(rng.choice(len(texts), int(len(texts) * frac), replace=False))
        ref = [[p for p, _ in h] for h in exact.search(queries, 10, subset)]
        fallbacks[0] = 0
        t0 = time.perf_counter()
        got = [[p for p, _ in h] for h in plaid.search(queries, 10, subset)]
        sec = (time.perf_counter() - t0) / len(queries)
        inside = all(set(g) <= set(subset.tolist()) for g in got)
        full = all(len(g) == min(10, len(subset)) for g in got)
        route = "exhaustive (pids=)" if len(subset) <= plaid.exhaustive_max else f"filter_fn, {fallbacks[0]} fallbacks"
        print(f"  filter {frac:6.1%} ({len(subset):5d} chunks): {overlap_at_k(got, ref):.3f}  ({1000 * sec:.0f} ms/query, "
              f"{route}; all hits in the subset: {inside}; k hits every query: {full})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["exact", "eval", "build-plaid", "plaid"])
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base", "real"])
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kmeans-niters", type=int, default=None)
    ap.add_argument("--queries", type=int, default=32)
    a = ap.parse_args()
    defaults = {"exact": 10000, "eval": 100000, "build-plaid": 20000, "plaid": 20000}
    a.chunks = a.chunks or defaults[a.stage]
    {"build-plaid": build_plaid, "exact": bench_exact, "eval": bench_eval, "plaid": bench_plaid}[a.stage](a)


if __name__ == "__main__":
    main()
