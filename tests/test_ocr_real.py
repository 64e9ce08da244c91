"""OCR on a scanned copy of real PDFs (written by others): the words come back, on their pages, findable.

The scan is made at test time: page 1 of ``minimal-document.pdf`` and page 1
of ``pdflatex-4-pages.pdf`` (tests/data/pdfs, py-pdf/sample-files) rendered
at 200 dpi in grey by pypdfium2 and saved by Pillow as one image-only PDF, so
no text layer is left. The original text layers are the reference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypdf import PdfReader

from colbert_modal import ColbertIndexer, ocr
from colbert_modal.cli import cli
from conftest import PDFS

pypdfium2 = pytest.importorskip("pypdfium2")
pytest.importorskip("rapidocr")

SOURCES = [("minimal-document.pdf", 0), ("pdflatex-4-pages.pdf", 0)]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@pytest.fixture(scope="module")
def scanned_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The image-only PDF and each page's original text."""
    out = tmp_path_factory.mktemp("real-scan") / "scanned-copy.pdf"
    images, texts = [], []
    for name, index in SOURCES:
        doc = pypdfium2.PdfDocument(str(PDFS / name))
        images.append(doc[index].render(scale=200 / 72, grayscale=True).to_pil().convert("L"))
        doc.close()
        texts.append(PdfReader(PDFS / name).pages[index].extract_text())
    images[0].save(out, "PDF", resolution=200, save_all=True, append_images=images[1:])
    assert all(not page.extract_text().strip() for page in PdfReader(out).pages)  # no text layer left
    return out, texts


@pytest.mark.slow
def test_a_scanned_copy_of_real_pages_is_read_and_found_on_its_pages(
    scanned_copy: tuple[Path, list[str]], colbert_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf, originals = scanned_copy
    root = tmp_path / "root"
    idx = ColbertIndexer("scans", model=str(colbert_checkpoint), index_root=root, progress=False, backend="exact")
    report = idx.index(pdf)  # ocr="auto": the default with the extra installed
    assert report.ocr_pages == {str(pdf): [1, 2]}

    chunks = idx.store.current().chunks()
    for page, original in enumerate(originals, start=1):
        read = " ".join(c.text for c in chunks if c.pages == [page])
        want = _words(original)
        got = set(_words(read))
        missed = [w for w in want if w not in got]
        # the words as words: an engine that runs them together ("textwithoutameaning") misses most of them
        assert len(missed) <= 0.05 * len(want), (page, len(missed), len(want), missed[:20])

    for query, page in (("gubergren", 1), ("Huardest gefburn", 2)):
        hits = idx.search(query, k=3, mode="keyword")
        assert hits and hits[0].pages == [page] and hits[0].source == str(pdf), (query, hits[:1])
        assert hits[0].metadata.get("ocr_engine"), hits[0].metadata

    # the CLI finds it too, from the same index; a second index of the same file is served by the OCR cache
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "Huardest gefburn", "--name", "scans", "--index-root", str(root),
                                 "--mode", "keyword", "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["pages"] == [2]

    def no_second_ocr(*args: object, **kwargs: object) -> None:
        raise AssertionError("OCR ran again for a file in the cache")

    monkeypatch.setattr(ocr, "ocr_image", no_second_ocr)
    result = runner.invoke(cli, ["index", str(pdf), "--name", "again", "--index-root", str(root),
                                 "--model", str(colbert_checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["ocr_pages"] == {str(pdf): [1, 2]}
    assert [c.text for c in ColbertIndexer("again", index_root=root, progress=False).store.current().chunks()] == [
        c.text for c in chunks
    ]
