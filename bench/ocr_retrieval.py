"""The retrieval cost of OCR: R@5 of the labelled questions on scanned copies vs the originals.

    nice -n 19 .venv/bin/python bench/make_scans.py                 # once: the scanned copies
    nice -n 19 .venv/bin/python bench/ocr_retrieval.py [--dpi 300] [--with-geotopo]

Two indexes, each built in its own child process with the ``real`` checkpoint
(bench/real_weights.py), ``backend="exact"``, ``precision="fp32"``, 256-token
chunks (bench/quality.py's ``cm_exact``): the original sample PDFs
(``ocr="off"``), and their scanned copies from bench/make_scans.py
(``copies/<dpi>/``, the same file names) with ``ocr="auto"`` and an empty OCR
cache (``$COLBERT_MODAL_OCR_CACHE`` in a temporary folder unless set). Build CPU
time counts the loader processes (where local mode OCRs). Without
``--with-geotopo`` the corpus is bench/quality.py's default (the 7 English
sample PDFs, every page of the copies scanned); with it, the mixed copy of the
German lecture notes too (its labelled pages scanned, the rest text).
Questions: those of bench/queries/labelled.jsonl all of whose answer pages
are image-only in the copy. Prints R@1, R@5, R@10 and MRR@10 of both, the
questions whose rank changed, each build's CPU and wall time and the pages
OCR'd. Needs ``index(..., ocr=...)`` (issue 25); says so and stops without it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import REPO, checkpoint, pick_pdfs, run_worker, worker_main
from make_scans import OUT as SCANS
from quality import NO_GEOTOPO, K, first_relevant, load_questions, scores

SCRIPT = Path(__file__).resolve()
RESULTS = REPO / "bench" / "results" / "ocr"


def w_index(ckpt: str, pdfs: list[str], root: str, ocr: str, questions: list[str]) -> dict[str, Any]:
    import colbert_modal

    idx = colbert_modal.ColbertIndexer("ocr-bench", model=ckpt, index_root=root, backend="exact", precision="fp32",
                                      max_tokens=256, progress=False)
    def kids() -> float:  # the loader processes, where local mode OCRs
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    t0, c0, k0 = time.perf_counter(), time.process_time(), kids()
    report = idx.index(pdfs, ocr=ocr)
    build = {"index_wall_s": time.perf_counter() - t0, "index_cpu_s": time.process_time() - c0 + kids() - k0}
    res = idx.search_batch(questions, k=K)
    return {"ranked": [[[Path(r.source).name, list(r.pages)] for r in rs] for rs in res],
            "n_chunks": report.chunks_total, "skipped": [str(s.path) for s in report.skipped],
            "ocr_pages": {str(f): list(p) for f, p in dict(getattr(report, "ocr_pages", None) or {}).items()},
            "warnings": [str(w) for w in getattr(report, "warnings", [])][:20], **build}


def scanned_pages(pdf: Path) -> set[int]:
    """1-based pages of ``pdf`` without a text layer."""
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    return {i for i, p in enumerate(PdfReader(str(pdf)).pages, 1) if not (p.extract_text() or "").strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpi", type=int, default=300)
    ap.add_argument("--with-geotopo", action="store_true")
    ap.add_argument("--scans", type=Path, default=SCANS)
    a = ap.parse_args()
    from colbert_modal import ColbertIndexer

    index_fn = getattr(ColbertIndexer.index, "__wrapped__", ColbertIndexer.index)  # a dispatchable method
    if "ocr" not in inspect.signature(index_fn).parameters:
        raise SystemExit("ColbertIndexer.index has no ocr= parameter yet (issue 25): nothing to measure")
    copies = a.scans / "copies" / str(a.dpi)
    if not copies.is_dir():
        raise SystemExit(f"{copies} missing: run bench/make_scans.py --dpi {a.dpi} first")
    # a fresh OCR cache (colbert_modal.ocr.OcrCache), so that the scanned build pays for its OCR
    ocr_cache = tempfile.mkdtemp(prefix="cm-ocr-cache-")
    os.environ.setdefault("COLBERT_MODAL_OCR_CACHE", ocr_cache)
    ckpt = str(checkpoint("real"))
    _common.PREFETCH.append(Path(ckpt))
    originals = [p for p in pick_pdfs(None) if a.with_geotopo or p.name in NO_GEOTOPO]
    scans = [copies / p.name for p in originals]
    scanned = {p.name: scanned_pages(p) for p in scans}
    qs = [q for q in load_questions() if q["file"] in scanned and set(q["pages"]) <= scanned[q["file"]]]
    questions = [q["question"] for q in qs]
    print(f"{len(qs)} questions on scanned pages; {sum(map(len, scanned.values()))} scanned pages in "
          f"{len(scans)} files ({a.dpi} dpi); load {os.getloadavg()}", flush=True)
    R: dict[str, Any] = {"_meta": {"dpi": a.dpi, "questions": len(qs), "load_before": os.getloadavg(),
                                   "files": [p.name for p in scans]}}
    for name, pdfs, ocr in (("originals", originals, "off"), ("scanned", scans, "auto")):
        with tempfile.TemporaryDirectory(prefix=f"cm-ocr-{name}-") as root:
            r = run_worker(SCRIPT, "index", {"ckpt": ckpt, "pdfs": [str(p) for p in pdfs], "root": root, "ocr": ocr,
                                             "questions": questions}, timeout=7200)
        r["scores"] = scores(r["ranked"], qs)
        R[name] = r
        s = r["scores"]
        print(f"{name:10s} chunks {r['n_chunks']:4d}  R@1 {s['recall@1']:.3f}  R@5 {s['recall@5']:.3f}"
              f"  R@10 {s['recall@10']:.3f}  MRR@10 {s['mrr@10']:.3f}  build {r['index_cpu_s']:.0f} s CPU"
              f" / {r['index_wall_s']:.0f} s wall, OCR'd pages: {sum(map(len, r['ocr_pages'].values()))}, skipped {r['skipped']}",
              flush=True)
    for q, ro, rs in zip(qs, R["originals"]["ranked"], R["scanned"]["ranked"], strict=True):
        a_, b_ = first_relevant(ro, q), first_relevant(rs, q)
        if a_ != b_:
            print(f"  {q['id']}: rank {a_} -> {b_}  ({q['question'][:70]})")
    R["_meta"]["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"retrieval-{a.dpi}{'-geotopo' if a.with_geotopo else ''}.json"
    out.write_text(json.dumps(R, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    if not worker_main({"index": w_index}):
        main()
