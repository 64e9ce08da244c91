"""Sharded indexes (issue 16): per-shard build time, fan-out search, the merge, and a cost projection.

    nice -n 0 .venv/bin/python bench/shards.py run --model tiny-random --chunks 2000 --shards 1 2 4 --threads 1
    nice -n 0 .venv/bin/python bench/shards.py run --model base --chunks 500 --shards 1 2 4 --threads 1   # long on 2 cores
    nice -n 0 .venv/bin/python bench/shards.py run --model tiny --chunks 1000 --backend plaid   # long on a CPU
    .venv/bin/python bench/shards.py project        # the BENCHMARKS.md projection table (no measuring)

``--threads 1`` sets ``OMP_NUM_THREADS`` in the workers: on a loaded machine
torch's spinning intra-op threads made every small operation wait (BENCHMARKS.md).

``run`` writes the corpus (the chunks of ``bench/scaling.py``: the real PDFs'
chunks extended with word-shuffled copies, one chunk per ``.txt`` file, so a
file is one chunk and shards are balanced), then for each shard count, each
in its own child process:

* **build**: ``ColbertIndexer(name, shards=N).index([docs])`` in local mode
  (the shards are built one after another in that process, the model loaded
  once, before the timing); the whole index call, ``report.timings`` (its
  ``shard sNNN`` entries are each shard's ``build_shard``), and each shard's
  encode time (``Engine.encode_documents`` calls made while that shard was
  built);
* **search**: a fresh process opens the index; first search, warm single
  query p50/p95, 64 singles vs one ``search_batch`` of 64 (through
  ``ColbertIndexer``), each shard's own batch time (``OpenShards.parts``),
  and the time spent in ``sharding.merge_results`` during a batch; then
  ``merge_results`` alone on those per-shard results at k=10 and k=100
  (the merge overhead, measured directly);

and compares every sharded index's top-10 with the unsharded one's (exact:
should differ only by ties at equal score; PLAID: the agreement). Raw figures
go to ``bench/results/shards/`` (git-ignored). ``uptime``'s load average is
recorded before and after each child: this machine is shared.

``project`` prints the wall-time / cost table for 1M and 10M chunks on N
L4, A10G or H100 containers from the constants below (see BENCHMARKS.md,
"Sharded indexes (issue 16)", for where each comes from).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import checkpoint, make_queries, pick_pdfs, run_worker, worker_main  # noqa: E402

SCRIPT = Path(__file__).resolve()
RESULTS = SCRIPT.parent / "results" / "shards"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- workers (each in its own process) --------------------------------------------------------


def w_build(docs: str, ckpt: str, root: str, name: str, shards: int, backend: str, max_tokens: int,
            kmeans_niters: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    import colbert_modal
    from colbert_modal import engine as eng
    from colbert_modal import sharding

    t_import = time.perf_counter() - t0
    if kmeans_niters is not None:
        from filters import cap_kmeans

        cap_kmeans(kmeans_niters)
    t0 = time.perf_counter()
    engine = eng.get_engine(ckpt)  # the model, loaded and run once before the timing (a container's start)
    engine.encode_documents(["warm up the encoder"], max_tokens=max_tokens)
    engine.encode_queries(["warm up"])
    t_model = time.perf_counter() - t0

    enc = {"s": 0.0, "texts": 0}
    orig_encode = eng.Engine.encode_documents

    def timed_encode(self: Any, texts: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_encode(self, texts, *a, **k)
        finally:
            enc["s"] += time.perf_counter() - t
            enc["texts"] += len(texts)

    eng.Engine.encode_documents = timed_encode  # type: ignore[method-assign]
    per_shard: dict[str, dict[str, Any]] = {}
    orig_build = sharding.build_shard

    def timed_build(job: Any, **kw: Any) -> Any:
        e0, n0, t = enc["s"], enc["texts"], time.perf_counter()
        res = orig_build(job, **kw)
        per_shard[job.shard] = {"seconds": time.perf_counter() - t, "encode_s": enc["s"] - e0,
                                "encoded": enc["texts"] - n0, "chunks": res.chunks}
        return res

    sharding.build_shard = timed_build  # type: ignore[assignment]
    idx = colbert_modal.ColbertIndexer(name, model=ckpt, index_root=root, backend=backend, max_tokens=max_tokens,
                                      progress=False, shards=shards)
    t0 = time.perf_counter()
    report = idx.index([docs])
    total = time.perf_counter() - t0
    info = idx.info()
    return {"shards": shards, "backend": backend, "import_s": t_import, "model_load_s": t_model, "index_s": total,
            "timings": report.timings, "chunks": report.chunks_total, "files": report.documents_total,
            "shard_chunks": info.shard_chunks, "per_shard": per_shard, "encode_s": enc["s"],
            "encoded": enc["texts"], "load_avg": load_avg()}


def w_search(ckpt: str, root: str, name: str, queries: list[str], n_warm: int) -> dict[str, Any]:
    import colbert_modal
    from colbert_modal import sharding

    merge = {"s": 0.0, "calls": 0}
    orig_merge = sharding.merge_results

    def timed_merge(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_merge(*a, **k)
        finally:
            merge["s"] += time.perf_counter() - t
            merge["calls"] += 1

    sharding.merge_results = timed_merge  # type: ignore[assignment]
    t0 = time.perf_counter()
    idx = colbert_modal.ColbertIndexer(name, model=ckpt, index_root=root, progress=False)
    idx.search(queries[0], k=10)
    open_s = time.perf_counter() - t0

    def single(q: str) -> list[str]:
        return [h.chunk_id for h in idx.search(q, k=10)]

    def batch(qs: list[str]) -> list[list[str]]:
        return [[h.chunk_id for h in hits] for hits in idx.search_batch(qs, k=10)]

    out = _common.measure_search(single, batch, queries, n_warm)
    out.pop("ranked")
    out["open_and_first_s"] = open_s
    merge["s"], merge["calls"] = 0.0, 0
    qs = queries[: _common.N_BATCH]
    t0 = time.perf_counter()
    results = {k: idx.search_batch(qs, k=k) for k in (10, 100)}
    out["batch_64_k10_k100_s"] = time.perf_counter() - t0
    out["merge_in_batches_s"], out["merge_calls"] = merge["s"], merge["calls"]
    out["top10"] = [[(h.chunk_id, h.score) for h in hits] for hits in results[10]]
    out["top100"] = [[(h.chunk_id, h.score) for h in hits] for hits in results[100]]

    # each shard's own batch time, and merge_results alone on the shards' results
    opened = sharding.open_generation(idx.store.current())
    parts = getattr(opened, "parts", None)
    if parts:
        out["per_shard_batch_s"] = {}
        per: dict[int, list[list[Any]]] = {}
        for k in (10, 100):
            res = []
            for sid, part in parts.items():
                t0 = time.perf_counter()
                res.append(part.search_batch(qs, k))
                if k == 10:
                    out["per_shard_batch_s"][sid] = time.perf_counter() - t0
            per[k] = res
        for k, res in per.items():
            lists = [[r[i] for r in res] for i in range(len(qs))]
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                for i, q in enumerate(qs):
                    orig_merge(lists[i], k, q)
                times.append((time.perf_counter() - t0) / len(qs))
            out[f"merge_k{k}_us_per_query"] = 1e6 * statistics.median(times)
            out[f"merge_k{k}_us_min"] = 1e6 * min(times)
    # what every shard pays again: the query encoding (each shard's index encodes the queries itself)
    from colbert_modal.engine import get_engine

    engine = get_engine(ckpt)
    one = []
    for q in queries[:20]:
        t0 = time.perf_counter()
        engine.encode_queries([q])
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    engine.encode_queries(qs)
    out["query_encode_ms"] = 1000 * statistics.median(one)
    out["query_encode_64_s"] = time.perf_counter() - t0
    out["load_avg"] = load_avg()
    return out


WORKERS = {"build": w_build, "search": w_search}


# --- comparison -------------------------------------------------------------------------------


def differing(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]], tol: float = 1e-3) -> dict[str, Any]:
    """Queries whose top lists differ: as lists, and beyond ties (hits above the cut-off score, by id)."""
    strict = beyond = 0
    max_score_diff = 0.0
    for x, y in zip(a, b, strict=True):
        if [c for c, _ in x] != [c for c, _ in y]:
            strict += 1
        for (_, sx), (_, sy) in zip(x, y, strict=False):
            max_score_diff = max(max_score_diff, abs(sx - sy))
        cut = x[-1][1] if x else 0.0
        if len(x) != len(y) or {c for c, s in x if s > cut + tol} != {c for c, s in y if s > cut + tol}:
            beyond += 1
    return {"queries": len(a), "differ_as_lists": strict, "differ_beyond_ties": beyond,
            "max_score_diff_by_rank": max_score_diff}


def agreement(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]], k: int = 10) -> float:
    vals = [len({c for c, _ in x[:k]} & {c for c, _ in y[:k]}) / max(1, min(k, len(y))) for x, y in zip(a, b, strict=True)]
    return statistics.fmean(vals) if vals else float("nan")


def run(a: argparse.Namespace) -> None:
    from scaling import corpus

    if a.threads:  # torch's intra-op threads in the workers (OMP spin-waits suffer on a loaded machine)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(a.threads)
    ckpt = str(checkpoint(a.model))
    _common.PREFETCH.append(Path(ckpt))
    tag = (f"{a.model}-{a.chunks}-{a.backend}" + (f"-km{a.kmeans_niters}" if a.kmeans_niters else "")
           + (f"-t{a.threads}" if a.threads else ""))
    work = RESULTS / f"work-{tag}"
    if work.exists():
        shutil.rmtree(work)
    docs = work / "docs"
    docs.mkdir(parents=True)
    texts = corpus(pick_pdfs(None), ckpt, a.chunks, a.max_tokens)
    for i, t in enumerate(texts):
        (docs / f"c{i:06d}.txt").write_text(t, encoding="utf-8")
    queries = make_queries(texts, ckpt, 64)
    out: dict[str, Any] = {"model": a.model, "chunks_asked": a.chunks, "backend": a.backend,
                           "kmeans_niters": a.kmeans_niters, "max_tokens": a.max_tokens, "queries": len(queries),
                           "threads": a.threads, "cpus": os.cpu_count(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "build": {}, "search": {}}
    for n in a.shards:
        for rep in range(a.repeat):
            before = load_avg()
            root = work / f"root-{n}"
            if root.exists():
                shutil.rmtree(root)
            b = run_worker(SCRIPT, "build", dict(docs=str(docs), ckpt=ckpt, root=str(root), name="ix", shards=n,
                                                 backend=a.backend, max_tokens=a.max_tokens,
                                                 kmeans_niters=a.kmeans_niters), timeout=3600)
            b["load_avg_before"] = before
            out["build"].setdefault(str(n), []).append(b)
            per = b["per_shard"]
            print(f"build shards={n} rep={rep}: index {b['index_s']:.2f}s (model load {b['model_load_s']:.2f}s "
                  f"before), encode {b['encode_s']:.2f}s, chunks {b['chunks']}, per shard "
                  + ", ".join(f"{s}: {v['seconds']:.2f}s/{v['chunks']}" for s, v in sorted(per.items()))
                  + f"; load {before} -> {b['load_avg']}", flush=True)
        before = load_avg()
        s = run_worker(SCRIPT, "search", dict(ckpt=ckpt, root=str(work / f"root-{n}"), name="ix", queries=queries,
                                              n_warm=a.n_warm), timeout=3600)
        s["load_avg_before"] = before
        out["search"][str(n)] = s
        print(f"search shards={n}: p50 {s['warm_p50_ms']:.1f} ms, p95 {s['warm_p95_ms']:.1f} ms, batch64 "
              f"{s['batch_64_s']:.2f}s, merge k10 {s.get('merge_k10_us_per_query', 0):.0f} us/q, k100 "
              f"{s.get('merge_k100_us_per_query', 0):.0f} us/q; load {before} -> {s['load_avg']}", flush=True)
    ref = out["search"].get(str(a.shards[0]))
    if ref is not None:
        out["compare"] = {}
        for n in a.shards[1:]:
            got = out["search"][str(n)]
            out["compare"][str(n)] = {"top10": differing(ref["top10"], got["top10"]),
                                      "top100": differing(ref["top100"], got["top100"]),
                                      "agreement_at_10": agreement(got["top10"], ref["top10"])}
            print(f"shards={n} vs {a.shards[0]}: {out['compare'][str(n)]}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.write_text(json.dumps(out, indent=1))
    print(f"wrote {dest}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


# --- projection -------------------------------------------------------------------------------

#: Measured on the H100 (BENCHMARKS.md section 7, run A, BERT-base-sized checkpoint, ~231 tokens
#: per chunk): 100,000 chunks, encode 20.7 s, k-means 28.0 s (10 iterations), whole PLAID build 68.5 s.
H100_CHUNKS = 100_000
H100_ENCODE_S = 20.7
H100_KMEANS_S = 28.0
H100_BUILD_S = 68.5
#: The rest of that build (compression of every chunk's residuals, IVF, saving): linear in chunks.
H100_REST_S = H100_BUILD_S - H100_ENCODE_S - H100_KMEANS_S

#: Dense FP16 tensor throughput, TFLOP/s (no sparsity): the ratio that scales the H100's seconds
#: to the other GPUs (sources in BENCHMARKS.md; A10G assumed, see there).
TFLOPS = {"L4": 121.0, "A10G": 70.0, "H100": 989.4}
#: Modal's per-second GPU prices, USD (modal.com/pricing as transcribed 2026-07-01; "A10" there).
PRICE_S = {"L4": 0.000222, "A10G": 0.000306, "H100": 0.001097}
#: Modal's CPU and memory prices, USD per core-second and per GiB-second (same source).
CPU_CORE_S, MEM_GIB_S = 0.0000131, 0.00000222
#: Per container: the Writer's 4 cores (modal_app.WRITER_CPU); memory billed: the 16 GiB
#: reservation (modal_app.WRITER_MEMORY_MB), or the shard's host peak (:func:`host_gb`) where that is more.
CORES, MIN_MEM_GIB = 4, 16
#: The Writer's timeout (modal_app.WRITER_TIMEOUT), seconds: a longer shard build is stopped.
WRITER_TIMEOUT_S = 120 * 60
#: Assumed, not measured: a GPU container's start (scheduled, image on the host, Volume mounted) and
#: the model load, seconds; the publish (top manifest written, Volume committed), seconds.
START_S, MODEL_S, PUBLISH_S = 30.0, 10.0, 5.0
#: The Writer's and the ShardWriters' ``scaledown_window`` (modal_app): billed idle seconds after the work.
SCALEDOWN_S, SHARD_SCALEDOWN_S = 120.0, 20.0
#: Modal's concurrent GPUs per workspace on the Team plan (Starter: 10): more shards run in waves.
MAX_CONCURRENT = 50
#: Host memory of a PLAID build (BENCHMARKS.md section 7's process peaks, 4.9 / 11.6 / 20.1 GB at
#: 10k / 30k / 100k chunks, fit exactly by base + per sampled passage; the sample is colbert-ai's
#: min(n, 16 * sqrt(120 n)) passages: 10,000 / 30,000 / 55,426).
HOST_BASE_GB, HOST_PER_SAMPLED_MB = 1.55, 0.335


def sampled_passages(chunks: float) -> float:
    """colbert-ai's k-means sample (``CollectionIndexer._sample_pids``): passages encoded for k-means."""
    return min(chunks, 1 + 16 * math.sqrt(120 * chunks))


def host_gb(chunks: float) -> float:
    """Peak host memory of one shard's PLAID build, GB (decimal), from section 7's fit."""
    return HOST_BASE_GB + HOST_PER_SAMPLED_MB * sampled_passages(chunks) / 1000


def shard_seconds(gpu: str, chunks: float) -> dict[str, float]:
    """One shard's build on ``gpu``: encode, k-means and the rest, each linear in chunks (k-means:
    K ~ sqrt(tokens) centroids x 128 K points per iteration ~ tokens, within the power-of-two steps
    of K), scaled from the H100 by the FP16 tensor throughput ratio."""
    slow = TFLOPS["H100"] / TFLOPS[gpu]
    per = chunks / H100_CHUNKS
    return {"encode": H100_ENCODE_S * per * slow, "kmeans": H100_KMEANS_S * per * slow,
            "rest": H100_REST_S * per * slow}


def projection(total: int, n: int, gpu: str) -> dict[str, float]:
    """Wall and cost of indexing ``total`` chunks in ``n`` shards, one ``gpu`` container each.

    Remote mode's shape (modal_app): the client's plan goes to the Writer (a GPU container), which
    maps the shard jobs over ShardWriter containers (same GPU), waits, and publishes. Every
    container is billed from its start until its scale-down window (Writer 2 min, ShardWriter 20 s) has passed.
    """
    chunks = math.ceil(total / n)
    s = shard_seconds(gpu, chunks)
    shard_s = START_S + MODEL_S + sum(s.values())  # one shard's container, start to result
    waves = math.ceil(n / MAX_CONCURRENT)
    mem_gib = max(MIN_MEM_GIB, host_gb(chunks) * 1e9 / 2**30)
    rate = PRICE_S[gpu] + CORES * CPU_CORE_S + mem_gib * MEM_GIB_S
    writer_rate = PRICE_S[gpu] + CORES * CPU_CORE_S + MIN_MEM_GIB * MEM_GIB_S
    if n == 1:  # an unsharded index: the Writer builds it itself
        wall = shard_s + PUBLISH_S
        usd, idle = (wall + SCALEDOWN_S) * rate, SCALEDOWN_S * rate
    else:  # the Writer starts, the shards run (in waves), the Writer publishes
        wall = START_S + waves * shard_s + PUBLISH_S
        usd = n * (shard_s + SHARD_SCALEDOWN_S) * rate + (wall + SCALEDOWN_S) * writer_rate
        idle = n * SHARD_SCALEDOWN_S * rate + SCALEDOWN_S * writer_rate
    return {"chunks_per_shard": chunks, "waves": waves, "shard_work_s": sum(s.values()), "container_s": shard_s,
            "wall_s": wall, "usd": usd, "usd_without_idle": usd - idle,
            "host_gb": host_gb(chunks), **{f"{k}_s": v for k, v in s.items()}}


def fmt_s(sec: float) -> str:
    return f"{sec / 3600:.1f} h" if sec >= 3600 else f"{sec / 60:.1f} min"


def project(_: argparse.Namespace) -> None:
    print("| chunks | N | chunks / shard | shard host GB | L4 wall | L4 USD | A10G wall | A10G USD | H100 wall |"
          " H100 USD |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for total in (1_000_000, 10_000_000):
        for n in (1, 4, 16, 64):
            cells = []
            for gpu in ("L4", "A10G", "H100"):
                p = projection(total, n, gpu)
                late = "*" if p["container_s"] > WRITER_TIMEOUT_S else ""
                cells += [fmt_s(p["wall_s"]) + late, f"{p['usd']:,.2f} ({p['usd_without_idle']:,.2f})"]
            p = projection(total, n, "H100")
            print(f"| {total:,} | {n} | {p['chunks_per_shard']:,} | {p['host_gb']:.0f} | " + " | ".join(cells) + " |")
    print("\nper-chunk seconds (GPU work only):", {g: round(sum(shard_seconds(g, 1).values()) * 1e3, 3)
                                                 for g in TFLOPS}, "ms")
    for n in (10_000, 20_000, 30_000, 50_000, 70_000, 100_000, 250_000):
        print(f"host GB at {n:,} chunks/shard: {host_gb(n):.1f} (sample {sampled_passages(n):,.0f})")


def main() -> None:
    if worker_main(WORKERS):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base", "real"])
    r.add_argument("--chunks", type=int, default=4000)
    r.add_argument("--shards", nargs="+", type=int, default=[1, 2, 4])
    r.add_argument("--backend", default="exact", choices=["exact", "plaid"])
    r.add_argument("--kmeans-niters", type=int, default=None, help="cap PLAID's k-means iterations")
    r.add_argument("--max-tokens", type=int, default=256)
    r.add_argument("--n-warm", type=int, default=40)
    r.add_argument("--repeat", type=int, default=1, help="builds per shard count")
    r.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the workers (default: torch's)")
    r.add_argument("--keep", action="store_true", help="keep the corpus and indexes under bench/results/shards/")
    r.set_defaults(fn=run)
    p = sub.add_parser("project")
    p.set_defaults(fn=project)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
