"""Scans with known text, for the OCR benchmarks (bench/ocr_quality.py, bench/ocr_retrieval.py).

    nice -n 19 .venv/bin/python bench/make_scans.py [--dpi 150 300] [--out DIR]

Renders real pages of the sample PDFs (``/work/shared/data/pdfs``, see its
README) with pypdfium2 at each dpi, as 8-bit grey, and saves them as
image-only PDFs with PIL (one JPEG image per page, quality 75, the page size
of the original: what a scanner or a "print to image" makes). Nothing of the
original's text layer survives. Written under ``<bench cache>/ocr-scans/``
(``$COLBERT_BENCH_CACHE``, default ``~/.cache/colbert_modal_bench``), outside
the repo:

- ``pages/<dpi>/<file stem>-p<N>.pdf``: one page each, the pages of
  :data:`PAGES` (8 English pages of ordinary body text from 4 files, 8
  German pages of prose from the lecture notes); ``pages.json`` holds each
  page's reference text: the original's text layer as the library reads it
  (pypdf ``extract_text``).
- ``copies/<dpi>/<file name>``: scanned copies for the retrieval benchmark,
  named as the originals (so the labelled questions' ``file`` matches):
  every English sample PDF that bench/quality.py indexes, all pages scanned;
  ``GeoTopo-komprimiert.pdf`` as a mixed file: the pages of :data:`PAGES`
  and of its labelled questions scanned, the other 100+ pages kept as they are.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, GOOD_PDFS, pick_pdfs

OUT = CACHE / "ocr-scans"
#: (language, file, 1-based pages): single- and multi-column body text, no tables, little maths
PAGES: list[tuple[str, str, list[int]]] = [
    ("en", "federal-register-2020-17221.pdf", [3, 4, 5, 14]),  # three columns
    ("en", "pdflatex-4-pages.pdf", [1, 2]),
    ("en", "google-doc-document.pdf", [1]),
    ("en", "multicolumn.pdf", [2]),  # two columns
    ("de", "GeoTopo-komprimiert.pdf", [2, 28, 68, 76, 80, 90, 105, 112]),  # the most prose-like (share of plain words)
]
#: the German labelled questions' pages, scanned in the mixed copy too
GEOTOPO_LABELLED = [2, 18, 68]
JPEG_QUALITY = 75


def render(pdf_path: Path, page: int, dpi: int) -> object:
    """Page ``page`` (1-based) of ``pdf_path`` as a PIL grey image at ``dpi``."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf_path))
    try:
        return doc[page - 1].render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
    finally:
        doc.close()


def image_pdf(images: list[object], dpi: int) -> bytes:
    buf = io.BytesIO()
    first, *rest = images
    first.save(buf, "PDF", resolution=float(dpi), save_all=True, append_images=rest,  # type: ignore[attr-defined]
               quality=JPEG_QUALITY)
    return buf.getvalue()


def text_layer(pdf_path: Path, page: int) -> str:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # fontTools notices, one per font
    return PdfReader(str(pdf_path)).pages[page - 1].extract_text() or ""


def scanned_copy(src: Path, dpi: int, scan: set[int] | None) -> bytes:
    """``src`` with the pages in ``scan`` (all if None) replaced by their images."""
    import logging

    from pypdf import PdfReader, PdfWriter

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(str(src))
    n = len(reader.pages)
    todo = set(range(1, n + 1)) if scan is None else scan
    scanned = PdfReader(io.BytesIO(image_pdf([render(src, p, dpi) for p in sorted(todo)], dpi)))
    by_page = dict(zip(sorted(todo), scanned.pages, strict=True))
    w = PdfWriter()
    for i, page in enumerate(reader.pages, 1):
        w.add_page(by_page.get(i, page))
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpi", type=int, nargs="+", default=[150, 300])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pdfs", help="folder of the sample PDFs (default: the shared data folder)")
    a = ap.parse_args()
    src = {p.name: p for p in pick_pdfs(a.pdfs)}
    refs = []
    for lang, name, pages in PAGES:
        for p in pages:
            refs.append({"lang": lang, "file": name, "page": p, "stem": f"{Path(name).stem}-p{p}",
                         "text": text_layer(src[name], p)})
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "pages.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1), encoding="utf-8")
    geotopo_scan = set(GEOTOPO_LABELLED) | {p for _, n, ps in PAGES if n.startswith("GeoTopo") for p in ps}
    for dpi in a.dpi:
        pages_dir, copies_dir = a.out / "pages" / str(dpi), a.out / "copies" / str(dpi)
        pages_dir.mkdir(parents=True, exist_ok=True)
        copies_dir.mkdir(parents=True, exist_ok=True)
        for r in refs:
            (pages_dir / f"{r['stem']}.pdf").write_bytes(image_pdf([render(src[r["file"]], r["page"], dpi)], dpi))
        for name in GOOD_PDFS:
            if name in src:
                scan = geotopo_scan if name.startswith("GeoTopo") else None
                (copies_dir / name).write_bytes(scanned_copy(src[name], dpi, scan))
        size = sum(f.stat().st_size for f in pages_dir.iterdir()) / len(refs) / 1024
        print(f"{dpi} dpi: {len(refs)} pages in {pages_dir} ({size:.0f} KiB/page), copies in {copies_dir}")


if __name__ == "__main__":
    main()
