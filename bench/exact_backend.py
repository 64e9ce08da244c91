"""Exact backend before/after: build and search memory and speed of two engine versions.

    nice -n 10 .venv/bin/python bench/exact_backend.py --model tiny --sizes 1000 2000
    nice -n 10 .venv/bin/python bench/exact_backend.py --before-rev HEAD~1   # another "before"

"before" is ``src/colbert_modal/engine.py`` (or the ``engine/`` package) at a git
revision (default c107e18, the engine before the exact-backend rework),
loaded as a module of the installed package (``_common.load_engine``); "after" is the working tree.
Each (version, stage) runs in its own child process: build = encode + write
the index (``Engine.build_exact``); search = open the index, then
``_common.measure_search`` (warm-ups, 20 timed single queries, 64 singles vs
one batch of 64). Peak RSS is the child's ``ru_maxrss``; the baseline RSS
(model loaded, nothing built) is printed too. Both versions encode in the
default precision: "after" runs bfloat16 on AMX CPUs, so its top-10 lists
match "before"'s exactly only with ``COLBERT_MODAL_PRECISION=fp32``
(measured: 64/64 at 200 tiny chunks, 58/64 in bfloat16).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (  # noqa: E402
    checkpoint,
    engine_source,
    load_engine,
    make_queries,
    measure_search,
    pick_pdfs,
    run_worker,
    worker_main,
)
from scaling import corpus  # noqa: E402

SCRIPT = Path(__file__).resolve()


def _engine_module(src: str | None) -> Any:
    return load_engine(src)


def w_build(src: str | None, ckpt: str, texts_file: str, dest: str, max_tokens: int) -> dict[str, Any]:
    eng = _engine_module(src).Engine(ckpt)
    texts = json.loads(Path(texts_file).read_text())
    eng.encode_documents(texts[:2], max_tokens=max_tokens)  # load the model first
    import resource

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    eng.build_exact(texts, Path(dest), max_tokens=max_tokens)
    return {"build_s": time.perf_counter() - t0, "baseline_rss_mb": base}


def w_search(src: str | None, ckpt: str, dest: str, queries: list[str]) -> dict[str, Any]:
    mod = _engine_module(src)
    eng = mod.Engine(ckpt)
    eng.encode_queries(queries[:1])  # load the model first
    import resource

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    idx = mod.ExactIndex(eng, Path(dest))
    t_open = time.perf_counter() - t0
    m = measure_search(lambda q: [i for i, _ in idx.search([q], 10)[0]],
                       lambda qs: [[i for i, _ in h] for h in idx.search(qs, 10)], queries, 20)
    return {"open_s": t_open, "p50_ms": m["warm_p50_ms"], "p95_ms": m["warm_p95_ms"],
            "batch64_s": m["batch_64_s"], "baseline_rss_mb": base, "top": m["ranked"]}


def w_ab(src: str, ckpt: str, dest: str, queries: list[str]) -> dict[str, Any]:
    """Both versions in one process on one index, queries alternated: a noise-robust latency ratio."""
    import statistics

    old, new = _engine_module(src), _engine_module(None)
    eng = new.Engine(ckpt)
    a, b = old.ExactIndex(eng, Path(dest)), new.ExactIndex(eng, Path(dest))
    qv = eng.encode_queries(queries[:64])  # score pre-encoded queries: only the MaxSim part differs

    def t(idx: Any, Q: Any) -> float:
        t0 = time.perf_counter()
        if hasattr(idx, "_scores"):
            idx._scores(Q)
        else:  # the old version has no _scores: run its search with encoding stubbed
            enc = eng.encode_queries
            eng.encode_queries = lambda qs: Q  # type: ignore[method-assign]
            try:
                idx.search(["x"] * Q.shape[0], 10)
            finally:
                eng.encode_queries = enc  # type: ignore[method-assign]
        return time.perf_counter() - t0

    single = []
    for i in range(30):
        Q = qv[i % 64 : i % 64 + 1]
        x, y = (t(a, Q), t(b, Q)) if i % 2 else (t(b, Q), t(a, Q))[::-1]
        single.append((x, y))
    batch = []
    for i in range(3):
        x, y = (t(a, qv), t(b, qv)) if i % 2 else (t(b, qv), t(a, qv))[::-1]
        batch.append((x, y))
    return {"single_before_ms": 1000 * statistics.median(x for x, _ in single),
            "single_after_ms": 1000 * statistics.median(y for _, y in single),
            "single_ratio": statistics.median(y / x for x, y in single),
            "batch_before_s": statistics.median(x for x, _ in batch),
            "batch_after_s": statistics.median(y for _, y in batch),
            "batch_ratio": statistics.median(y / x for x, y in batch)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000])
    ap.add_argument("--before-rev", default="c107e18")
    ap.add_argument("--max-tokens", type=int, default=256)
    a = ap.parse_args()
    ckpt = str(checkpoint(a.model))
    _common.PREFETCH.append(Path(ckpt))
    work = Path(tempfile.mkdtemp(prefix="cm-exact-"))
    before = engine_source(a.before_rev, work / "before")
    try:
        print(" chunks | version | build s | build RSS MB (base) | open s | p50 ms | p95 ms | batch64 s |"
              " search RSS MB (base) | same top-10")
        for n in a.sizes:
            texts = corpus(pick_pdfs(None), ckpt, n, a.max_tokens)
            tf = work / f"texts-{n}.json"
            tf.write_text(json.dumps(texts))
            queries = make_queries(texts, ckpt, 64)
            res = {}
            for label, src in (("before", str(before)), ("after", None)):
                dest = work / f"{label}-{n}"
                b = run_worker(SCRIPT, "build", dict(src=src, ckpt=ckpt, texts_file=str(tf), dest=str(dest),
                                                     max_tokens=a.max_tokens))
                s = run_worker(SCRIPT, "search", dict(src=src, ckpt=ckpt, dest=str(dest), queries=queries))
                res[label] = s["top"]
                same = "-" if label == "before" else f"{sum(x == y for x, y in zip(res['before'], s['top']))}/64"
                print(f" {n:6d} | {label:7s} | {b['build_s']:7.2f} | {b['peak_rss_mb']:8.0f} ({b['baseline_rss_mb']:4.0f})"
                      f"     | {s['open_s']:6.2f} | {s['p50_ms']:6.1f} | {s['p95_ms']:6.1f} | {s['batch64_s']:9.2f} |"
                      f" {s['peak_rss_mb']:8.0f} ({s['baseline_rss_mb']:4.0f})      | {same}", flush=True)
                if label == "after":
                    ab = run_worker(SCRIPT, "ab", dict(src=str(before), ckpt=ckpt, dest=str(dest), queries=queries))
                    print(f"   in-process A/B, MaxSim only (after/before): single query {ab['single_after_ms']:.1f}"
                          f" / {ab['single_before_ms']:.1f} ms = {ab['single_ratio']:.2f}x;"
                          f" batch of 64 {ab['batch_after_s']:.2f} / {ab['batch_before_s']:.2f} s"
                          f" = {ab['batch_ratio']:.2f}x", flush=True)
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if not worker_main({"build": w_build, "search": w_search, "ab": w_ab}):
        main()
