"""OCR engines on scans with known text: CER, WER, CPU seconds per page per core, peak memory.

    nice -n 19 .venv/bin/python bench/make_scans.py          # once: the scans and their reference text
    nice -n 19 .venv/bin/python bench/ocr_quality.py [--engines ...] [--dpi 150 300] [--threads 1]

Each engine runs in its own child process (peak RSS per engine) over the
one-page image-only PDFs of bench/make_scans.py: the page is rendered with
pypdfium2 at the scan's dpi (the pixels of the scan, as the library will
render it) and handed to the engine; only the engine's call is timed.
With ``--threads 1`` (default) every engine runs on one thread
(onnxruntime intra/inter-op threads 1, ``OMP_NUM_THREADS=1``,
``OMP_THREAD_LIMIT=1`` for tesseract), so CPU time per page
(``time.process_time``; for tesseract, ``RUSAGE_CHILDREN`` of its process)
is seconds per page per core. Engine construction (model load) is timed apart.

Engines (one is skipped, with the reason, when it is not installed):

- ``rapidocr-onnxruntime``: rapidocr-onnxruntime 1.4.4, PP-OCRv4 (ch) models in the wheel;
- ``rapidocr3``: ``rapidocr`` 3.x + onnxruntime, its default PP-OCRv6 small (multilingual)
  models in the wheel; run by ``$OCR_BENCH_RAPIDOCR3_PYTHON`` (default
  ``/tmp/ocrbench-venv/bin/python``, a venv that sees the project venv's
  packages and adds ``rapidocr`` with omegaconf and colorlog) or this interpreter if it has it;
- ``colbert-modal``: what the library indexes, ``colbert_modal.ocr.ocr_image`` (its engine, rapidocr 3
  since the switch; the page as rendered here, padded, its lines in the engine's order);
- ``tesseract``: the system binary (``apt-get install tesseract-ocr tesseract-ocr-deu``),
  called per page as ``tesseract page.png - -l eng|deu`` (the page's language given);
- ``none``: render only, the baseline of the worker's memory and the rendering cost.

Text normalisation, the same for reference and OCR output: Unicode NFKC;
typographic quotes and dashes to ASCII (' " -); a hyphen or soft hyphen at a
line end joins the two halves; every run of whitespace becomes one space.
Case and punctuation count. CER = character edit distance / reference
characters; WER = word edit distance / reference words (words split on
spaces); both summed over the pages of a group before dividing. Edit
distances depend on reading order: a three-column page read across the
columns scores badly even when every word is right, so ``missed words`` is
also given: the share of the reference's words (lower case, ``\\w+``) not
found in the OCR output, counted as multisets, whatever the order, which is
what a search index sees.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MARK, REPO, env, worker_main
from make_scans import OUT as SCANS

SCRIPT = Path(__file__).resolve()
RESULTS = REPO / "bench" / "results" / "ocr"
ENGINES = ["rapidocr-onnxruntime", "colbert-modal", "rapidocr3", "tesseract", "none"]
TESS_LANG = {"en": "eng", "de": "deu"}
#: the pages (file stems) set in two or three columns
MULTI_COLUMN = ("federal-register", "multicolumn")


# --- engines (in the worker) -------------------------------------------------------


def _rapidocr14(threads: int) -> tuple[Any, str]:
    from importlib.metadata import version

    from rapidocr_onnxruntime import RapidOCR  # type: ignore[import-not-found]

    kw = {"intra_op_num_threads": threads, "inter_op_num_threads": threads} if threads > 0 else {}
    eng = RapidOCR(**kw)

    def run(img: Any, lang: str) -> str:
        result, _ = eng(img)
        return "\n".join(r[1] for r in result or [])

    return run, version("rapidocr-onnxruntime")


def _rapidocr3(threads: int) -> tuple[Any, str]:
    from importlib.metadata import version

    from rapidocr import RapidOCR  # type: ignore[import-not-found]

    params: dict[str, Any] = {"Global.log_level": "warning"}
    if threads > 0:
        params.update({"EngineConfig.onnxruntime.intra_op_num_threads": threads,
                       "EngineConfig.onnxruntime.inter_op_num_threads": threads})
    eng = RapidOCR(params=params)

    def run(img: Any, lang: str) -> str:
        out = eng(img)
        return "\n".join(out.txts or [])

    return run, version("rapidocr")


def _tesseract(threads: int) -> tuple[Any, str]:
    exe = shutil.which("tesseract")
    assert exe
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    tmp = Path(tempfile.mkdtemp(prefix="ocrbench-tess-"))

    def run(img: Any, lang: str) -> str:
        png = tmp / "page.png"
        img.save(png)
        e = dict(os.environ)
        if threads > 0:
            e["OMP_THREAD_LIMIT"] = str(threads)
        with subprocess.Popen([exe, str(png), str(tmp / "out"), "-l", TESS_LANG[lang]], env=e,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
            status = Path(f"/proc/{proc.pid}/status")
            while proc.poll() is None:  # its own high-water mark (ru_maxrss of children counts the fork)
                try:
                    hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")]
                    if hwm:
                        TESS_PEAK[0] = max(TESS_PEAK[0], int(hwm[0].split()[1]) / 1024)
                except OSError:
                    pass
                time.sleep(0.01)
            if proc.returncode:
                raise RuntimeError(f"tesseract failed: {proc.stderr.read().decode()[-300:] if proc.stderr else ''}")
        return (tmp / "out.txt").read_text(encoding="utf-8")

    return run, ver


TESS_PEAK = [0.0]  # MB, the largest VmHWM seen of a tesseract process


def _library(threads: int) -> tuple[Any, str]:
    """What the library indexes: ``colbert_modal.ocr.ocr_image`` (its engine, lines in its order)."""
    from colbert_modal import ocr

    def run(img: Any, lang: str) -> str:
        return str(ocr.ocr_image(img, scale=img.size[0] / 612, page_height=img.size[1] * 612 / img.size[0])["text"])

    return run, f"{ocr.engine_version()} (colbert_modal.ocr)"


def _none(threads: int) -> tuple[Any, str]:
    return (lambda img, lang: ""), "-"


LOADERS = {"rapidocr-onnxruntime": _rapidocr14, "colbert-modal": _library, "rapidocr3": _rapidocr3, "tesseract": _tesseract, "none": _none}


def w_ocr(engine: str, pages: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """OCR each page (``path``, ``dpi``, ``lang``) with ``engine``; texts and CPU seconds per page."""
    import pypdfium2 as pdfium

    t0, c0 = time.perf_counter(), time.process_time()
    run, ver = LOADERS[engine](threads)
    load = {"load_cpu_s": time.process_time() - c0, "load_wall_s": time.perf_counter() - t0}
    out = []
    for p in pages:
        doc = pdfium.PdfDocument(p["path"])
        c = time.process_time()
        img = doc[0].render(scale=p["dpi"] / 72, grayscale=True).to_pil()
        render = time.process_time() - c
        doc.close()
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c, w = time.process_time(), time.perf_counter()
        text = run(img, p["lang"])
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
        out.append({"text": text, "cpu_s": cpu, "wall_s": wall, "render_cpu_s": render, "size": list(img.size)})
    return {"version": ver, "pages": out, "children_peak_rss_mb": TESS_PEAK[0], **load}


# --- metrics ------------------------------------------------------------------------

_TR = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-",
                     "−": "-", "\u00a0": " "})


def normalise(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).translate(_TR)
    t = re.sub(r"[\ufffe\u00ad]\s*", "", t)  # soft hyphens (pdfium/pypdf write U+FFFE or U+00AD)
    t = re.sub(r"(\w)-[ \t]*\r?\n\s*(\w)", r"\1\2", t)  # a word broken at a line end
    return re.sub(r"\s+", " ", t).strip()


def edit_distance(a: list[Any] | str, b: list[Any] | str) -> int:
    """Levenshtein distance; numpy, one row at a time (insertions by a running minimum)."""
    import numpy as np

    if not a or not b:
        return max(len(a), len(b))
    codes: dict[Any, int] = {}
    ia = np.array([codes.setdefault(x, len(codes)) for x in a])
    ib = np.array([codes.setdefault(x, len(codes)) for x in b])
    j = np.arange(len(ib) + 1)
    prev = j.copy()
    for i, x in enumerate(ia, 1):
        cand = np.empty_like(prev)
        cand[0] = i
        cand[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (ib != x))
        prev = np.minimum.accumulate(cand - j) + j
    return int(prev[-1])


def page_scores(ref: str, hyp: str) -> dict[str, int]:
    r, h = normalise(ref), normalise(hyp)
    rw, hw = r.split(), h.split()
    bag_r = collections.Counter(re.findall(r"\w+", r.lower()))
    bag_h = collections.Counter(re.findall(r"\w+", h.lower()))
    r0, h0 = r.replace(" ", ""), h.replace(" ", "")
    return {"chars": len(r), "char_edits": edit_distance(r, h), "words": len(rw), "word_edits": edit_distance(rw, hw),
            "chars_nospace": len(r0), "char_edits_nospace": edit_distance(r0, h0),
            "bag": sum(bag_r.values()), "bag_found": sum((bag_r & bag_h).values())}


# --- driver -------------------------------------------------------------------------


def python_for(engine: str) -> tuple[str | None, str]:
    """The interpreter that runs ``engine``, or None and why not."""
    if engine == "tesseract":
        if not shutil.which("tesseract"):
            return None, "no tesseract binary on PATH (apt-get install tesseract-ocr tesseract-ocr-deu)"
        langs = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split()
        missing = [v for v in TESS_LANG.values() if v not in langs]
        return (sys.executable, "") if not missing else (None, f"tesseract has no {missing} traineddata")
    module = {"rapidocr-onnxruntime": "rapidocr_onnxruntime", "colbert-modal": "rapidocr", "rapidocr3": "rapidocr", "none": "pypdfium2"}[engine]
    candidates = [sys.executable]
    if engine == "rapidocr3":
        candidates.insert(0, os.environ.get("OCR_BENCH_RAPIDOCR3_PYTHON", "/tmp/ocrbench-venv/bin/python"))
    if engine == "rapidocr-onnxruntime":  # requires opencv-python, which clashes with the extra's headless build
        candidates.insert(0, os.environ.get("OCR_BENCH_RAPIDOCR14_PYTHON", "/tmp/ocr14/bin/python"))
    for py in candidates:
        if Path(py).exists() and subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode == 0:
            return py, ""
    return None, f"python module {module} not importable by {' or '.join(candidates)}"


def run_engine(py: str, engine: str, pages: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    e = env()
    if threads > 0:
        e.update(OMP_NUM_THREADS=str(threads), OMP_THREAD_LIMIT=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                 MKL_NUM_THREADS=str(threads))
    # no network: a model download at run time would fail here instead of passing unnoticed
    e.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="",
             http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    args = json.dumps({"engine": engine, "pages": pages, "threads": threads})
    proc = subprocess.run([py, str(SCRIPT), "--worker", "ocr", "--args", args], capture_output=True, text=True,
                          env=e, cwd=str(REPO), timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-2000:] + "\n" + proc.stderr[-4000:] + "\n")
        raise RuntimeError(f"engine {engine} failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}")
    return json.loads(lines[-1][len(MARK):])


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("chars", "char_edits", "words", "word_edits", "bag", "bag_found", "chars_nospace", "char_edits_nospace")
    s = {k: sum(r[k] for r in rows) for k in keys}
    n = len(rows)
    return {"pages": n, "cer": s["char_edits"] / s["chars"], "wer": s["word_edits"] / s["words"],
            "cer_nospace": s["char_edits_nospace"] / s["chars_nospace"],
            "missed_words": 1 - s["bag_found"] / s["bag"],
            "cpu_s_per_page": sum(r["cpu_s"] for r in rows) / n, "render_cpu_s_per_page": sum(r["render_cpu_s"] for r in rows) / n}


def rescore(R: dict[str, Any], refs: list[dict[str, Any]]) -> None:
    """Score the OCR texts saved in ``R`` again (after a change of the metrics), and print the tables."""
    by_stem = {r["stem"]: r for r in refs}
    print("| engine | lang | dpi | CER | CER w/o spaces | WER | missed words | CPU s/page/core | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine, res in R.items():
        if engine.startswith("_") or "pages" not in res:
            continue
        rows = [{**p, **page_scores(by_stem[p["stem"]]["text"], p["text"])} for p in res["pages"]]
        dpis = sorted({r["dpi"] for r in rows})
        res["pages"] = rows
        res["groups"] = {f"{lang}-{dpi}": summarise([r for r in rows if r["lang"] == lang and r["dpi"] == dpi])
                         for dpi in dpis for lang in ("en", "de")}
        for dpi in dpis:  # reading order aside: the English single-column pages alone
            res["groups"][f"en 1-col-{dpi}"] = summarise([r for r in rows if r["lang"] == "en" and r["dpi"] == dpi
                                                          and not r["stem"].startswith(MULTI_COLUMN)])
        peak = max(res["peak_rss_mb"], res.get("tesseract_peak_rss_mb") or 0)
        for g, s in res["groups"].items():
            lang, dpi = g.rsplit("-", 1)
            print(f"| {engine} {res['version']} | {lang} | {dpi} | {100 * s['cer']:.1f}% | {100 * s['cer_nospace']:.1f}%"
                  f" | {100 * s['wer']:.1f}% | {100 * s['missed_words']:.1f}% | {s['cpu_s_per_page']:.2f} | {peak:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--dpi", type=int, nargs="+", default=[150, 300])
    ap.add_argument("--threads", type=int, default=1, help="threads per engine (0: the engine's default)")
    ap.add_argument("--scans", type=Path, default=SCANS)
    ap.add_argument("--rescore", action="store_true", help="recompute the scores of the saved OCR texts, run nothing")
    a = ap.parse_args()
    refs_file = a.scans / "pages.json"
    if not refs_file.exists():
        raise SystemExit(f"{refs_file} missing: run bench/make_scans.py first")
    refs = json.loads(refs_file.read_text(encoding="utf-8"))
    pages = [{"path": str(a.scans / "pages" / str(dpi) / f"{r['stem']}.pdf"), "dpi": dpi, "lang": r["lang"],
              "ref": i} for dpi in a.dpi for i, r in enumerate(refs)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"quality-t{a.threads}.json"  # engines run before, in another call, are kept
    R: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    R["_meta"] = {"threads": a.threads, "cpus": os.cpu_count(), "pages": len(refs), "dpi": a.dpi}
    if a.rescore:
        rescore(R, refs)
        out.write_text(json.dumps(R, ensure_ascii=False, indent=1), encoding="utf-8")
        return
    for engine in a.engines:
        py, why = python_for(engine)
        if py is None:
            print(f"{engine}: skipped: {why}", flush=True)
            R[engine] = {"skipped": why}
            continue
        t0, load_before = time.perf_counter(), os.getloadavg()
        try:
            res = run_engine(py, engine, [{k: p[k] for k in ("path", "dpi", "lang")} for p in pages], a.threads)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{engine}: failed: {exc}", flush=True)
            R[engine] = {"failed": str(exc)}
            continue
        rows = []
        for p, o in zip(pages, res["pages"], strict=True):
            rows.append({**o, **page_scores(refs[p["ref"]]["text"], o["text"]), "dpi": p["dpi"], "lang": p["lang"],
                         "stem": refs[p["ref"]]["stem"]})
        by_stem = {r["stem"]: r for r in refs}
        rows += [{**r, **page_scores(by_stem[r["stem"]]["text"], r["text"])}  # other dpis' runs, scored anew
                 for r in (R.get(engine) or {}).get("pages", []) if r["dpi"] not in a.dpi]
        dpis = sorted({r["dpi"] for r in rows})
        groups = {f"{lang}-{dpi}": summarise([r for r in rows if r["lang"] == lang and r["dpi"] == dpi])
                  for dpi in dpis for lang in ("en", "de")}
        R[engine] = {"version": res["version"], "python": py, "load_before": load_before, "peak_rss_mb": res["peak_rss_mb"],
                     "tesseract_peak_rss_mb": res["children_peak_rss_mb"], "load_cpu_s": res["load_cpu_s"],
                     "groups": groups, "wall_s": time.perf_counter() - t0, "load_after": os.getloadavg(),
                     "pages": [{k: v for k, v in r.items()} for r in rows]}
        print(f"{engine} {res['version']}: peak RSS {res['peak_rss_mb']:.0f} MB (tesseract process {res['children_peak_rss_mb']:.0f} MB),"
              f" model load {res['load_cpu_s']:.1f} s CPU", flush=True)
        for g, s in groups.items():
            if int(g.rsplit("-", 1)[1]) not in a.dpi:
                continue
            print(f"  {g}: CER {100 * s['cer']:.1f}%  WER {100 * s['wer']:.1f}%  missed words {100 * s['missed_words']:.1f}%"
                  f"  {s['cpu_s_per_page']:.2f} s/page/core (render {s['render_cpu_s_per_page']:.2f})", flush=True)
        out.write_text(json.dumps(R, ensure_ascii=False, indent=1), encoding="utf-8")  # after each engine
    out.write_text(json.dumps(R, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    if not worker_main({"ocr": w_ocr}):
        main()
