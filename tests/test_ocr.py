"""OCR of scanned PDF pages (colbert_modal.ocr): which pages, the cache, bad pages, the highlight, remote mode.

The scans are made at test time: a generated text PDF's page (a strip of a
Letter page, so that OCR takes a fraction of a second) rendered with
pypdfium2 and saved by Pillow as an image-only PDF page, so the words OCR
must find are known. The tiny test checkpoint is random: assertions are on
what the index holds (chunk texts and pages) and on keyword-heavy queries.
"""

from __future__ import annotations

import io
import json
import sys
import zlib
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer, DependencyMissingError, ocr
from colbert_modal.loaders import load_file
from colbert_modal.ocr import OcrSettings, needs_ocr
from colbert_modal.records import FileWarning
from helpers import write_pdf

pypdfium2 = pytest.importorskip("pypdfium2")
pytest.importorskip("rapidocr")
from pypdf import PdfReader, PdfWriter  # noqa: E402
from pypdf.generic import RectangleObject  # noqa: E402

SCAN_DPI = 200
STRIP = (0, 612, 612, 792)  # the top of a Letter page: where the generated lines are

PAGE_WORDS = {
    "penguin": "penguin quartz rhubarb saffron tornado",
    "umbrella": "umbrella volcano walrus xylophone zeppelin",
    "aardvark": "aardvark bicycle carousel dolphin espresso",
}


def _text_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF with a Helvetica 11 pt text layer (latin-1 text), lines from the top of each page."""
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for lines in pages:
        body = "BT /F1 11 Tf 15 TL 40 760 Td " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        stream = body.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       b"/Contents %d 0 R >>" % len(objects))
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    return write_pdf(path, objects)


def make_scan(path: Path, pages: list[list[str]], scanned: set[int], strip: tuple[int, ...] = STRIP) -> Path:
    """A PDF of ``pages`` (lines each) on strips of Letter pages; the 1-based pages in ``scanned`` as images only."""
    src = _text_pdf(path.with_suffix(".src.pdf"), pages)
    text = PdfReader(src)
    pdf = pypdfium2.PdfDocument(str(src))
    writer = PdfWriter()
    for n in range(1, len(pages) + 1):
        if n in scanned:
            page = pdf[n - 1]
            image = page.render(scale=SCAN_DPI / 72, crop=(0, strip[1], 0, 0)).to_pil().convert("L")
            buf = io.BytesIO()
            image.save(buf, format="PDF", resolution=SCAN_DPI)
            writer.add_page(PdfReader(buf).pages[0])
        else:
            page = text.pages[n - 1]
            page.mediabox = RectangleObject(strip)
            writer.add_page(page)
    pdf.close()
    with path.open("wb") as fh:
        writer.write(fh)
    src.unlink()
    return path


def _lines(key: str) -> list[str]:
    return [PAGE_WORDS[key], f"{PAGE_WORDS[key]} again"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the engine's calls (one per page OCR'd), through the real engine."""
    seen: list[int] = []
    real = ocr.ocr_image

    def counted(image, **kwargs):
        seen.append(1)
        return real(image, **kwargs)

    monkeypatch.setattr(ocr, "ocr_image", counted)
    return seen


def _indexer(root: Path, checkpoint: Path, name: str = "scans", **kwargs) -> ColbertIndexer:
    return ColbertIndexer(name, model=str(checkpoint), index_root=root, progress=False, backend="exact",
                          max_tokens=12, overlap=0, **kwargs)


def _chunks(idx: ColbertIndexer) -> list[dict]:
    gen = idx.store.current()
    return [json.loads(line) for line in (gen.path / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]


def _texts_by_pages(idx: ColbertIndexer) -> dict[tuple[int, ...], str]:
    """The index's chunk texts (lowercased, joined) by the pages they come from."""
    out: dict[tuple[int, ...], str] = {}
    for c in _chunks(idx):
        key = tuple(c["pages"])
        out[key] = f"{out.get(key, '')} {c['text'].lower()}"
    return out


# --- which pages ---------------------------------------------------------------------------------


def test_needs_ocr_rule() -> None:
    letter = (612, 792)
    assert needs_ocr("", *letter) and needs_ocr(" \n\t ", *letter)
    assert needs_ocr("CamScanner", *letter)  # a scanner's stamp: 10 letters on a Letter page
    assert not needs_ocr("Quarterly report of the northern region 2024", *letter)  # a sparse title page
    garbled = "\x01\x02\x03 " + "\ue000\ue001\ue002 " * 20 + "ab12 cd34 ef56 gh78 ij90 kl12"  # a broken font encoding
    assert needs_ocr(garbled, *letter)
    assert not needs_ocr("Background", 3.84, 3.84)  # a tiny page: its ten letters are plenty


def test_a_scan_under_a_thin_text_layer_is_ocrd(tmp_path: Path) -> None:
    """A scanner's stamp ("CamScanner") as the only text layer of a scanned page: OCR reads the page."""
    letter = (0, 0, 612, 792)  # a whole page: ten letters are far too few for it
    writer = PdfWriter(clone_from=make_scan(tmp_path / "scan.pdf", [_lines("penguin")], scanned={1}, strip=letter))
    stamp = PdfReader(_text_pdf(tmp_path / "stamp.pdf", [["", "", "", "", "", "", "", "CamScanner"]])).pages[0]
    writer.pages[0].merge_page(stamp)
    pdf = tmp_path / "stamped.pdf"
    with pdf.open("wb") as fh:
        writer.write(fh)
    assert load_file(pdf).pages[0].text.strip() == "CamScanner"  # without OCR: the stamp is all there is
    doc = load_file(pdf, ocr=_settings(tmp_path))
    assert "penguin quartz rhubarb" in doc.pages[0].text and doc.metadata["ocr_pages"] == [1]


def test_ocr_keeps_word_boundaries_and_umlauts(tmp_path: Path) -> None:
    """English words stay apart (the 1.4 engine read "umbrellavolcanowalrus") and German keeps umlauts and ß;
    every character has its box, a space the gap between its words, all on the strip's first lines."""
    pdf = make_scan(tmp_path / "scan.pdf", [["umbrella volcano walrus", "Übungen über Größe und Weiß"]], scanned={1})
    page = load_file(pdf, ocr=_settings(tmp_path)).pages[0]
    lines = page.text.splitlines()
    assert lines[0].split() == ["umbrella", "volcano", "walrus"]
    assert lines[1].split() == ["Übungen", "über", "Größe", "und", "Weiß"]
    (cached,) = (tmp_path / "cache").rglob("*.json")
    (entry,) = json.loads(cached.read_text(encoding="utf-8"))["pages"].values()
    chars, boxes = entry["chars"], entry["boxes"]
    assert chars == "umbrella volcano walrus\nÜbungen über Größe und Weiß" and len(boxes) == len(chars)
    first = boxes[: len("umbrella volcano walrus")]
    assert all(left < right and bottom < top for left, bottom, right, top in first)
    lefts = [b[0] for b in first]
    assert lefts == sorted(lefts) and 30 < lefts[0] < 50 and first[8][0] >= first[7][2] - 1  # the space: a gap


def test_ocr_setting_is_checked(tmp_path: Path) -> None:
    from colbert_modal.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ocr must be one of"):
        ColbertIndexer("x", index_root=tmp_path).index(tmp_path, ocr="yes")  # type: ignore[arg-type]


def test_mixed_file_ocrs_only_the_scanned_page(tmp_path: Path, colbert_checkpoint: Path, calls: list[int]) -> None:
    pdf = make_scan(tmp_path / "mixed.pdf", [_lines("aardvark"), _lines("penguin"), _lines("umbrella")], scanned={2})
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    report = idx.index(pdf)
    assert report.ocr_pages == {str(pdf): [2]} and len(calls) == 1
    assert any(w.message.startswith("OCR'd page(s) 2 (rapidocr ") for w in report.warnings)
    by_page = _texts_by_pages(idx)
    assert "penguin quartz rhubarb" in by_page[(2,)] and "aardvark" in by_page[(1,)] and "umbrella" in by_page[(3,)]
    assert idx.store.current().manifest.ocr.startswith(f"rapidocr {ocr.engine_version()} ")


def test_scanned_file_found_with_its_pages_and_highlighted(
    tmp_path: Path, colbert_checkpoint: Path, calls: list[int]
) -> None:
    pdf = make_scan(tmp_path / "scan.pdf", [_lines("penguin"), _lines("umbrella")], scanned={1, 2})
    with pytest.raises(Exception, match="no text layer"):
        load_file(pdf)  # today's loader (no OCR) skips it
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    report = idx.index(pdf)
    assert report.indexed == [str(pdf)] and report.ocr_pages == {str(pdf): [1, 2]}
    hits = idx.search("penguin quartz rhubarb saffron tornado", k=1)
    assert hits[0].pages == [1] and "penguin" in hits[0].text.lower()
    hits = idx.search("umbrella volcano walrus xylophone", k=5)
    assert 2 in hits[0].pages and "walrus" in hits[0].text.lower()
    (hit,) = [h for h in hits if h.pages == [2] and "umbrella volcano walrus" in h.text.lower()][:1]
    image = hit.page_image(dpi=72)  # the scanned page, its passage highlighted from the OCR boxes
    boxes = image.info["highlight"]
    assert boxes and all(0 <= top < bottom <= image.height and 0 <= left < right <= image.width
                         for left, top, right, bottom in boxes)
    assert min(top for _, top, _, _ in boxes) < image.height / 2  # the lines are at the top of the strip


def test_cache_no_second_ocr(tmp_path: Path, colbert_checkpoint: Path, calls: list[int],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = make_scan(tmp_path / "scan.pdf", [_lines("penguin")], scanned={1})
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    idx.index(pdf)
    assert len(calls) == 1
    assert idx.index(pdf, metadata={"scan.pdf": {"year": 2020}}).metadata_updated == [str(pdf)]
    report = idx.index(pdf, rebuild=True)  # read again: its OCR comes from the cache
    assert report.ocr_pages == {str(pdf): [1]} and len(calls) == 1
    _indexer(tmp_path / "root2", colbert_checkpoint).index(pdf)  # another index of the same file
    assert len(calls) == 1
    # another engine version OCRs again on rebuild, and the manifest says which
    monkeypatch.setattr(ocr, "engine_version", lambda: "0.0.1")
    warned = idx.index(pdf)
    assert any("rebuild=True OCRs them all again" in w.message for w in warned.warnings) and len(calls) == 1
    idx.index(pdf, rebuild=True)
    assert len(calls) == 2 and idx.store.current().manifest.ocr.startswith("rapidocr 0.0.1 ")


def test_off_and_force(tmp_path: Path, colbert_checkpoint: Path, calls: list[int]) -> None:
    mixed = make_scan(tmp_path / "mixed.pdf", [_lines("aardvark"), _lines("penguin")], scanned={2})
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    report = idx.index(mixed, ocr="off")
    assert report.ocr_pages == {} and calls == []
    assert [w.message for w in report.warnings] == [
        "no text layer on page(s) 2; index with ocr='auto' (CLI: --ocr auto) to OCR them; indexed the other pages"]
    report = idx.index(mixed, ocr="force", rebuild=True)
    assert report.ocr_pages == {str(mixed): [1, 2]} and len(calls) == 2
    assert "aardvark" in _texts_by_pages(idx)[(1,)]


def test_without_the_extra(tmp_path: Path, colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # import fails, as where it is not installed
    mixed = make_scan(tmp_path / "mixed.pdf", [_lines("aardvark"), _lines("penguin")], scanned={2})
    scan = make_scan(tmp_path / "scan.pdf", [_lines("umbrella")], scanned={1})
    idx = _indexer(tmp_path / "root", colbert_checkpoint)
    report = idx.index([mixed, scan])
    hint = "pip install 'colbert-modal[ocr]'"
    assert report.indexed == [str(mixed)] and report.ocr_pages == {}
    assert any(hint in w.message and "page(s) 2" in w.message for w in report.warnings)
    assert report.skipped[0].path == str(scan) and hint in report.skipped[0].reason
    with pytest.raises(DependencyMissingError, match=r"colbert-modal\[ocr\]"):
        idx.index(scan, ocr="force")


# --- bad pages ------------------------------------------------------------------------------------


def _image_page_pdf(path: Path, width: int, height: int, data: bytes, *, filt: str | None, bpc: int = 8,
                    cs: str = "/DeviceGray", media: tuple[float, float] = (612, 792)) -> Path:
    """A one-page PDF showing one image XObject with the given stream (corrupt or huge as the test needs)."""
    content = b"q %g 0 0 %g 0 0 cm /Im0 Do Q" % media
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Resources << /XObject << /Im0 5 0 R >> >> "
        b"/Contents 4 0 R >>" % media,
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        (b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace %s /BitsPerComponent %d "
         b"%s /Length %d >>\nstream\n" % (width, height, cs.encode(), bpc,
                                           f"/Filter {filt}".encode() if filt else b"", len(data)))
        + data + b"\nendstream",
    ]
    return write_pdf(path, objects)


def _with_pages(path: Path, *parts: Path) -> Path:
    writer = PdfWriter()
    for part in parts:
        for page in PdfReader(part).pages:
            writer.add_page(page)
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def _settings(tmp_path: Path, mode: str = "auto") -> OcrSettings:
    return OcrSettings(mode=mode, cache_dir=str(tmp_path / "cache"), engine=ocr.engine_id("test"))


def test_bad_pages_are_warnings_the_rest_is_read(tmp_path: Path) -> None:
    good = make_scan(tmp_path / "good.pdf", [_lines("penguin")], scanned={1})
    bomb = _image_page_pdf(tmp_path / "bomb.pdf", 20000, 20000, zlib.compress(bytes(20000 * 20000 // 8), 9),
                           filt="/FlateDecode", bpc=1)  # 400 MP declared in a ~50 KB stream
    corrupt = _image_page_pdf(tmp_path / "corrupt.pdf", 800, 600, b"\xff\xd8\xff\xe0 not a jpeg at all",
                              filt="/DCTDecode", cs="/DeviceRGB")
    huge = _image_page_pdf(tmp_path / "huge.pdf", 8, 8, bytes(64), filt=None,
                           media=(14400, 14400))  # 200 x 200 inches: over the pixel cap even at 100 dpi
    pdf = _with_pages(tmp_path / "bad.pdf", bomb, good, corrupt, huge)
    notes: list = []
    doc = load_file(pdf, warnings=notes, ocr=_settings(tmp_path))
    assert [p.number for p in doc.pages] == [2] and "penguin" in doc.pages[0].text.lower()
    assert doc.metadata["ocr_pages"] == [2]
    messages = [n.message for n in notes]
    assert any("page 1: an embedded image of 20000x20000 pixels is over the cap" in m for m in messages), messages
    assert any("page 4: 200x200 inches" in m for m in messages), messages
    assert any("page(s) 3" in m and "no text layer" in m for m in messages), messages  # the corrupt image: blank


def test_a_page_that_fails_to_ocr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = make_scan(tmp_path / "scan.pdf", [_lines("penguin"), _lines("umbrella")], scanned={1, 2})
    real = ocr.ocr_image
    seen: list[int] = []

    def flaky(image, **kwargs):
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("onnxruntime: bad allocation")
        return real(image, **kwargs)

    monkeypatch.setattr(ocr, "ocr_image", flaky)
    notes: list = []
    doc = load_file(pdf, warnings=notes, ocr=_settings(tmp_path))
    assert [p.number for p in doc.pages] == [2]
    assert any(n.message.startswith("OCR failed: page 1: could not be rendered or OCR'd (RuntimeError: onnxruntime")
               for n in notes)
    # the failure is not cached: the next read OCRs page 1 again, page 2 comes from the cache
    doc = load_file(pdf, warnings=[], ocr=_settings(tmp_path))
    assert [p.number for p in doc.pages] == [1, 2] and len(seen) == 3


# --- the CLI and remote mode -----------------------------------------------------------------------


def test_cli_indexes_and_finds_a_scan(tmp_path: Path, colbert_checkpoint: Path) -> None:
    from click.testing import CliRunner

    from colbert_modal.cli import cli

    pdf = make_scan(tmp_path / "scan.pdf", [_lines("penguin"), _lines("umbrella")], scanned={1, 2})
    base = ["--index-root", str(tmp_path / "root")]
    out = CliRunner().invoke(cli, ["index", str(pdf), "--name", "scans", "--model", str(colbert_checkpoint),
                                   "--max-tokens", "12", "--overlap", "0", "--json", *base])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["ocr_pages"] == {str(pdf): [1, 2]}
    out = CliRunner().invoke(cli, ["search", "umbrella volcano walrus xylophone", "--name", "scans", "-k", "1",
                                   "--json", *base])
    assert out.exit_code == 0, out.output
    (hit,) = json.loads(out.stdout)["results"] if isinstance(json.loads(out.stdout), dict) else json.loads(out.stdout)
    assert 2 in hit["pages"] and "walrus" in hit["text"].lower()  # the page OCR read it on
    out = CliRunner().invoke(cli, ["index", str(pdf), "--name", "off", "--model", str(colbert_checkpoint),
                                   "--ocr", "off", *base])
    assert out.exit_code != 0 and "no text layer" in out.output


def test_remote_mode_ocrs_through_the_modal_function(
    tmp_path: Path, colbert_checkpoint: Path, inprocess: Path, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    from colbert_modal import modal_app

    mapped: list[int] = []
    real_local = modal_app.ocr_page.local

    class Counting:
        def local(self, job):
            mapped.append(job.page)
            return real_local(job)

    from colbert_modal.remote import transports

    real_lookup = transports.Transport.lookup
    monkeypatch.setattr(transports.Transport, "lookup",
                        lambda self, name, *, cls: Counting() if name == "ocr_page" else real_lookup(self, name, cls=cls))
    mixed = make_scan(tmp_path / "mixed.pdf", [_lines("aardvark"), _lines("penguin")], scanned={2})
    scan = make_scan(tmp_path / "scan.pdf", [_lines("umbrella")], scanned={1})
    with ColbertIndexer("scans", mode="remote", model=str(colbert_checkpoint), progress=False, backend="exact",
                        max_tokens=12, overlap=0) as idx:
        report = idx.index([mixed, scan])
        assert report.ocr_pages == {str(mixed): [2], str(scan): [1]}
        assert sorted(mapped) == [1, 2] and len(calls) == 2  # each scanned page once, in the OCR function
        hits = idx.search("umbrella volcano walrus xylophone", k=1)
        assert hits[0].source == str(scan) and hits[0].pages == [1]
        assert idx.index([mixed, scan], rebuild=True).ocr_pages == {str(mixed): [2], str(scan): [1]}
        assert sorted(mapped) == [1, 2]  # the cache: nothing OCR'd again


# --- loader processes: the time limit is per page OCR'd ---------------------------------------------


def slow_ocr_reader(path: Path, password: str | None, *, ocr: OcrSettings | None = None) -> list:
    """A loader-process reader whose OCR takes 4 s more per page (it runs in a throwaway worker process)."""
    import time

    from colbert_modal import loadpool
    from colbert_modal import ocr as ocr_module

    real = ocr_module.ocr_image

    def slow(image, **kwargs):
        time.sleep(4)
        return real(image, **kwargs)

    ocr_module.ocr_image = slow
    return loadpool.read_file(path, password, ocr=ocr)


def test_loader_time_limit_counts_per_page_ocrd(
    tmp_path: Path, colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from colbert_modal import loadpool

    monkeypatch.setenv("COLBERT_MODAL_LOAD_TIMEOUT", "10")  # each page takes under 10 s, the file over it
    pdf = make_scan(tmp_path / "scan.pdf", [_lines("penguin"), _lines("umbrella"), _lines("aardvark")],
                    scanned={1, 2, 3})
    (out,) = loadpool.load_and_chunk(
        [pdf], [None], settings=(str(colbert_checkpoint), 12, 0), workers=1, max_chunks=100,
        reader=slow_ocr_reader, ocr=_settings(tmp_path),
    )
    (doc,) = [i for i in out.items if not isinstance(i, FileWarning)]
    assert doc.metadata["ocr_pages"] == [1, 2, 3], out.items
    assert "walrus" in " ".join(c.text for c in out.chunks or [])


def test_blank_pages_do_not_run_the_engine(tmp_path: Path, calls: list[int]) -> None:
    from colbert_modal.errors import NoTextLayerError
    from helpers import make_blank_pdf

    with pytest.raises(NoTextLayerError, match="OCR found no text on them either"):
        load_file(make_blank_pdf(tmp_path / "blank.pdf", 2), ocr=_settings(tmp_path))
    assert calls == []  # a page of one flat colour costs no OCR


def test_loader_processes_are_bounded_by_memory_where_they_may_ocr(
    tmp_path: Path, colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One loader process per core by default, but no more than one per GiB of available memory when pages may be
    OCR'd here (each may hold ~1 GB): a many-core machine with little free memory loads fewer files at once."""
    from colbert_modal import loadpool, pipeline

    settings = OcrSettings(mode="auto", engine=ocr.engine_id("1.4.4"))
    monkeypatch.setattr(ocr, "available_memory", lambda: 3 * ocr.OCR_WORKER_BYTES + 5)
    assert ocr.bounded_workers(8, settings) == 3
    assert ocr.bounded_workers(2, settings) == 2
    assert ocr.bounded_workers(8, OcrSettings(mode="off", engine=settings.engine)) == 8
    assert ocr.bounded_workers(8, OcrSettings(mode="auto", engine=settings.engine, remote=True)) == 8  # Modal OCRs
    monkeypatch.setattr(ocr, "available_memory", lambda: 0)  # unknown: no bound
    assert ocr.bounded_workers(8, settings) == 8

    used: list[int] = []
    real = pipeline.load_batch

    def spy(*args, workers, **kwargs):  # type: ignore[no-untyped-def]
        used.append(workers)
        return real(*args, workers=workers, **kwargs)

    monkeypatch.setattr(pipeline, "load_batch", spy)
    monkeypatch.setattr(loadpool, "usable_cores", lambda: 4)
    monkeypatch.setattr(loadpool, "PARALLEL_MIN_FILES", 2)
    monkeypatch.delenv(loadpool.ENV_WORKERS, raising=False)
    pdfs = [make_scan(tmp_path / f"f{i}.pdf", [_lines(key)], scanned=set()) for i, key in enumerate(PAGE_WORDS)]
    pdfs.append(make_scan(tmp_path / "f3.pdf", [_lines("penguin")], scanned=set()))
    monkeypatch.setattr(ocr, "available_memory", lambda: 2 * ocr.OCR_WORKER_BYTES + 5)
    _indexer(tmp_path / "root", colbert_checkpoint).index(pdfs)
    assert used == [2]  # 4 cores, 2 GiB free
    _indexer(tmp_path / "root2", colbert_checkpoint).index(pdfs, ocr="off")
    assert used == [2, 4]
