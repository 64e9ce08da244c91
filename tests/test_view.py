"""Hits you can see: the notebook tables, the page image with the passage highlighted, --open."""

from __future__ import annotations

import doctest
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from colbert_modal import DependencyMissingError, FileAccessError, display, view
from colbert_modal.chunking import Chunker, load_tokenizer
from colbert_modal.cli import cli
from colbert_modal.loaders import load_file
from colbert_modal.records import FileWarning, IndexReport, SearchResult, SearchResults, SkippedFile

PDF = Path(__file__).parent / "data" / "pdfs" / "pdflatex-4-pages.pdf"  # from ../shared/data/pdfs


def test_doctests() -> None:
    assert doctest.testmod(display).failed == 0
    assert doctest.testmod(view).failed == 0


def hit(chunk, rank: int = 1) -> SearchResult:
    return SearchResult(rank=rank, score=12.5, text=chunk.text, source=chunk.source, pages=chunk.pages,
                        chunk_id=chunk.id, document_id=chunk.document_id)


@pytest.fixture(scope="module")
def chunks(colbert_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    pdf = tmp_path_factory.mktemp("view") / PDF.name
    shutil.copy(PDF, pdf)
    chunker = Chunker(load_tokenizer(str(colbert_checkpoint)), max_tokens=64, overlap=8)
    return list(chunker.chunk(load_file(pdf)))


def char_boxes_px(path: str, page: int, phrase: str, scale: float) -> list[tuple[float, float, float, float]]:
    """Where pypdfium2's own text search finds ``phrase`` on the page, in pixels (left, top, right, bottom)."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(path)
    p = pdf[page - 1]
    textpage = p.get_textpage()
    searcher = textpage.search(phrase, match_case=False)
    found = searcher.get_next()
    assert found is not None, f"{phrase!r} not on page {page}"
    start, count = found
    height = p.get_height()
    boxes = []
    for i in range(start, start + count):
        left, bottom, right, top = textpage.get_charbox(i)
        if right > left:
            boxes.append((left * scale, (height - top) * scale, right * scale, (height - bottom) * scale))
    pdf.close()
    return boxes


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_page_image_highlights_the_chunk_text(chunks) -> None:
    on_page_2 = [c for c in chunks if c.pages[0] == 2 and len(c.text.split()) > 8]
    chunk = on_page_2[len(on_page_2) // 2]
    image = hit(chunk).page_image(dpi=100)
    boxes = image.info["highlight"]
    assert boxes, "the passage was not found on its page"
    phrase = " ".join(chunk.text.split()[:3])
    truth = char_boxes_px(chunk.source, 2, phrase, 100 / 72)
    assert any(overlaps(b, t) for b in boxes for t in truth)
    # the highlight is drawn: a highlighted pixel is yellower than the same pixel unmarked
    plain = view.render_page(chunk.source, 2, None, dpi=100)
    x0, y0, x1, _ = boxes[0]
    marked_px = image.getpixel(((x0 + x1) // 2, y0 + 1))
    plain_px = plain.getpixel(((x0 + x1) // 2, y0 + 1))
    assert marked_px[2] < plain_px[2] or plain_px[2] < 50  # less blue: yellow on white (or on black text)
    assert image.size == plain.size


def test_text_not_on_the_page_is_not_highlighted(chunks) -> None:
    image = view.render_page(chunks[0].source, 1, "zebra quagga okapi " * 5, dpi=30)
    assert image.info["highlight"] == []


def test_page_image_errors(chunks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moved = tmp_path / "moved.pdf"
    shutil.copy(chunks[0].source, moved)
    h = hit(chunks[0]).model_copy(update={"source": str(moved)})
    moved.unlink()
    with pytest.raises(FileAccessError, match=r"moved\.pdf.*not there any more"):
        h.page_image()
    assert "<img" not in h._repr_html_()  # the text still shows
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    with pytest.raises(DependencyMissingError, match=r"pip install 'colbert-modal\[view\]'"):
        hit(chunks[0]).page_image()


def test_hit_alone_shows_its_page_next_to_the_text(chunks) -> None:
    html = hit(chunks[0])._repr_html_()
    assert "<img" in html and "data:image/png;base64," in html and "p. 1" in html


def test_results_table(chunks) -> None:
    spanning = next(c for c in chunks if len(c.pages) > 1)
    results = SearchResults([hit(chunks[0]), hit(spanning, rank=2)], query="the section about figures")
    html = results._repr_html_()
    assert "<mark>" in html and "file://" in html and f"#page={chunks[0].pages[0]}" in html
    assert f"pp. {spanning.pages[0]}-{spanning.pages[-1]}" in html and "p. 1" in html
    assert html.count("<tr>") == 3 and "<th>rank</th>" in html
    again = pickle.loads(pickle.dumps(results))
    assert again.query == results.query and again == results and results == list(results)
    assert SearchResults().query is None


def test_report_table() -> None:
    report = IndexReport(
        index_name="papers", indexed=["/a.pdf"],
        skipped=[SkippedFile(path="/x/secret.pdf", reason="encrypted <no password>", error="EncryptedPDFError")],
        warnings=[FileWarning(path="/x/scan.pdf", message="2 pages without text")],
    )
    html = report._repr_html_()
    assert "secret.pdf" in html and "EncryptedPDFError" in html and "&lt;no password&gt;" in html
    assert "skipped files" in html and "warnings" in html and "scan.pdf" in html


@pytest.mark.slow
def test_cli_open_best_hit_at_its_page(built_index, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs, _ = built_index
    opened: list[list[str]] = []
    monkeypatch.setattr(view.subprocess, "Popen", lambda cmd, **_: opened.append(cmd))
    monkeypatch.setattr(view.sys, "platform", "linux")
    result = CliRunner().invoke(
        cli, ["search", "kangaroo lantern", "--name", "shared", "--index-root", kwargs["index_root"], "-k", "2", "--open"]
    )
    assert result.exit_code == 0, result.output
    assert len(opened) == 1 and opened[0][0] == "xdg-open"
    assert opened[0][1].startswith("file://") and opened[0][1].endswith("atlas.pdf#page=3")
    assert "1. atlas.pdf  p. 3" in result.stdout
