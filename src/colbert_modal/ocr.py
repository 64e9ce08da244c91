"""OCR for PDF pages without a text layer: which pages, the engine, the cache, and remote jobs.

The ``ocr`` extra (``pip install 'colbert-modal[ocr]'``) brings RapidOCR
(``rapidocr`` 3 with ``onnxruntime``: multilingual PP-OCRv6 models inside the
wheel, run on the CPU; opencv-python-headless, so no libGL; no system binary,
nothing downloaded at run time).
Pages are rendered with pypdfium2.

Which pages: with ``ocr="auto"`` a page is OCR'd when its text layer is
empty or too thin to be the page's text (:func:`needs_ocr`: fewer than
:data:`MIN_ALNUM_PER_SQ_INCH` letters and digits per square inch of page, or
mostly symbols and control characters, as broken font encodings give), and
the OCR text replaces the layer only where it holds more letters and digits;
``"force"`` OCRs every page and keeps the OCR text wherever it found any.

Every OCR'd page is cached by the file's content hash (:class:`OcrCache`,
``$COLBERT_MODAL_OCR_CACHE``, else a per-user cache directory): re-indexing
an unchanged file, or changing only its metadata, never OCRs again, and
``hit.page_image()`` finds the passage's characters and their boxes there.
The cache is keyed by :func:`engine_id` (engine, version, dpi): another
engine or version OCRs again.

Memory is bounded per page: a page is rendered at :data:`DEFAULT_DPI`,
scaled down to at most :data:`MAX_PAGE_PIXELS` pixels (not below
:data:`MIN_DPI`: such a page is skipped with a warning), and a page holding
an embedded image over the cap (a decompression bomb) is skipped without
decoding it. This module imports its engine and renderer lazily.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ColbertModalError
from .paths import user_dir

__all__ = [
    "DEFAULT_DPI",
    "ENGINE",
    "MAX_PAGE_PIXELS",
    "MIN_ALNUM_PER_SQ_INCH",
    "MODES",
    "OCR_HINT",
    "OCR_WORKER_BYTES",
    "OcrCache",
    "OcrJob",
    "OcrNeeded",
    "OcrSettings",
    "PageFailed",
    "PendingOcr",
    "alnum_count",
    "available_memory",
    "bounded_workers",
    "default_cache_dir",
    "engine_id",
    "engine_version",
    "needs_ocr",
    "ocr_image",
    "read_pages",
    "run_job",
]

logger = logging.getLogger(__name__)

#: The values ``index(..., ocr=)`` takes.
MODES = ("auto", "off", "force")
#: What to install for OCR.
OCR_HINT = "pip install 'colbert-modal[ocr]'"
#: The engine's distribution (its version is part of :func:`engine_id`).
ENGINE = "rapidocr"
#: Pages are rendered at this resolution for OCR (``$COLBERT_MODAL_OCR_DPI``). At 300 dpi rapidocr 3 misses
#: 4.1% of German words against 7.1% at 200 (English: the same), for the same CPU per page (its detector
#: scales a page to 2,000 px; the recogniser reads the lines from the full render): BENCHMARKS "OCR".
#: A Letter page is 8.4 MP at 300 dpi (~25 MB as RGB), well under :data:`MAX_PAGE_PIXELS`.
DEFAULT_DPI = 300
#: A page is never rendered below this resolution: where the pixel cap would need less, it is skipped.
MIN_DPI = 100
#: The most pixels a page is rendered to, and the most an embedded image may have (``$COLBERT_MODAL_OCR_MAX_PIXELS``).
#: 40 MP: an A3 page at 300 dpi is 17 MP; a render at this size takes ~120 MB as RGB.
MAX_PAGE_PIXELS = 40_000_000
#: Pages narrower or lower than this (points; half an inch) are not OCR'd: no legible line fits.
MIN_PAGE_SIDE = 36.0
#: A text layer with fewer letters and digits than this per square inch of page is OCR'd
#: (``auto``): a US Letter page needs 24; a born-digital page of prose has ~30 per square inch.
MIN_ALNUM_PER_SQ_INCH = 0.25
#: Nor is a text layer kept where fewer than this share of its visible characters are letters or digits.
MIN_ALNUM_SHARE = 0.5

#: Pixels of white added around a page image before OCR.
_PAD = 32

#: Called after each page OCR'd here (a loader process tells its parent it is still at work); None: nothing.
HEARTBEAT: Callable[[], Any] | None = None

_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()


class OcrNeeded(Exception):  # a signal, not an error: the pages go to Modal first
    """Remote mode: pages of this file need OCR that is not cached yet (the loader defers the file)."""

    def __init__(self, pending: PendingOcr) -> None:
        super().__init__(f"{pending.path}: {len(pending.jobs)} page(s) to OCR")
        self.pending = pending


class PageFailed(ColbertModalError):
    """One page could not be rendered or OCR'd (the rest of the file is indexed)."""


@dataclass(frozen=True)
class OcrJob:
    """One page to OCR on Modal: a one-page PDF (the page cut out of its file) and where it came from."""

    content_hash: str
    page: int
    pdf: bytes
    engine: str
    dpi: int
    max_pixels: int


@dataclass(frozen=True)
class PendingOcr:
    """A file the loader deferred (remote mode): its pages to OCR on Modal, then it is read again."""

    path: str
    content_hash: str
    jobs: list[OcrJob]


@dataclass(frozen=True)
class OcrSettings:
    """How a loader OCRs (plain data: it travels to loader processes).

    ``mode``: ``"auto"``, ``"force"`` or ``"off"`` (``hint``: what the
    warning about pages without text says to do). ``remote``: do not OCR
    here; defer uncached pages (:class:`OcrNeeded`). ``errors``: pages that
    failed on Modal, by content hash then page (reported, not OCR'd here).
    """

    mode: str = "auto"
    cache_dir: str = ""
    engine: str = ""
    dpi: int = DEFAULT_DPI
    max_pixels: int = MAX_PAGE_PIXELS
    remote: bool = False
    hint: str = ""
    errors: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def on(self) -> bool:
        return self.mode in ("auto", "force")


#: What one loader process that OCRs may hold at its peak (measured: 1,520 MB RSS with rapidocr 3 at 200 and
#: 300 dpi; BENCHMARKS "OCR").
OCR_WORKER_BYTES = 3 << 29


def available_memory() -> int:
    """Bytes of memory this machine can give without swapping (psutil's ``available``; 0 where unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unreadable: no bound
        return 0


def bounded_workers(n_workers: int, settings: OcrSettings | None) -> int:
    """At most one loader process per :data:`OCR_WORKER_BYTES` of available memory, where they may OCR here.

    The default is one process per core; a scanned page costs each up to ~1.5 GB, so a many-core machine with
    little free memory would swap or be killed. Born-digital files load in the same, fewer processes.
    """
    if settings is None or not settings.on or settings.remote or not settings.engine or n_workers <= 1:
        return n_workers
    free = available_memory()
    return n_workers if free <= 0 else max(1, min(n_workers, free // OCR_WORKER_BYTES))


def engine_version() -> str | None:
    """The installed engine's version, or None where the ``ocr`` extra is not installed (or not importable)."""
    try:
        import onnxruntime  # noqa: F401
        import pypdfium2  # noqa: F401
        import rapidocr  # noqa: F401
    except Exception:  # ImportError, or a broken install (e.g. opencv without libGL)
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(ENGINE)
    except PackageNotFoundError:  # pragma: no cover - importable but not installed as a distribution
        return "unknown"


def engine_id(version: str, dpi: int = DEFAULT_DPI) -> str:
    """What the manifest and the cache record: engine, version and rendering, e.g. ``rapidocr 3.10.0 @300dpi``."""
    return f"{ENGINE} {version} @{dpi}dpi"


def lock_version() -> str | None:
    """The engine version the Modal OCR image installs (its lock, ``image-ocr.lock``), or None."""
    lock = Path(__file__).with_name("image-ocr.lock")
    try:
        for line in lock.read_text(encoding="utf-8").splitlines():
            name, sep, ver = line.partition("==")
            if sep and name.strip().lower() == ENGINE:
                return ver.strip()
    except OSError:  # pragma: no cover - the lock ships with the package
        return None
    return None


def dpi_setting() -> int:
    raw = os.environ.get("COLBERT_MODAL_OCR_DPI", "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= MIN_DPI else DEFAULT_DPI


def max_pixels_setting() -> int:
    raw = os.environ.get("COLBERT_MODAL_OCR_MAX_PIXELS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else MAX_PAGE_PIXELS


def default_cache_dir() -> Path:
    """``$COLBERT_MODAL_OCR_CACHE``, else ``colbert-modal/ocr`` in the per-user cache directory.

    Linux: ``$XDG_CACHE_HOME`` (``~/.cache``); macOS: ``~/Library/Caches``;
    Windows: ``%LOCALAPPDATA%``. On this machine in both modes: remote mode
    plans here, and ``hit.page_image()`` reads the boxes here.
    """
    return user_dir("cache", "colbert-modal", "ocr", env="COLBERT_MODAL_OCR_CACHE")


# --- which pages -----------------------------------------------------------------------------


def alnum_count(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def needs_ocr(text: str, width_pt: float, height_pt: float) -> bool:
    """Whether a page's text layer is too thin (or garbled) to stand for the page (``ocr="auto"``).

    >>> needs_ocr("", 612, 792), needs_ocr("  \\n ", 612, 792), needs_ocr("Scanned by XYZ", 612, 792)
    (True, True, True)
    >>> needs_ocr("A title page with a few words on it", 612, 792)
    False
    >>> needs_ocr("\\x01\\x02\\x03 #### %%%% ~~~~ ()()()() A1 B2 C3 D4 E5 F6 G7", 612, 792)
    True
    """
    letters = alnum_count(text)
    if letters == 0:
        return True
    area = max(0.0, width_pt) * max(0.0, height_pt) / (72.0 * 72.0)
    if letters < MIN_ALNUM_PER_SQ_INCH * area:
        return True
    visible = sum(not ch.isspace() for ch in text)
    return letters < MIN_ALNUM_SHARE * visible


# --- the cache -------------------------------------------------------------------------------


class OcrCache:
    """OCR'd pages by file content hash: ``<dir>/<hash[:2]>/<hash>.json`` (one file per PDF).

    Each holds ``{"engine": engine_id, "pages": {"<n>": {"text", "chars", "boxes"}}}``;
    ``boxes`` are per character of ``chars``, ``[left, bottom, right, top]`` in PDF points
    (as pypdfium2 gives a text layer's). A file of another engine id reads as empty.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, content_hash: str) -> Path:
        return self.folder / content_hash[:2] / f"{content_hash}.json"

    def load(self, content_hash: str, engine: str | None = None) -> dict[int, dict[str, Any]]:
        """The cached pages of a file (any engine where ``engine`` is None); {} where none or unreadable."""
        try:
            data = json.loads(self.path(content_hash).read_text(encoding="utf-8"))
            if engine is not None and data.get("engine") != engine:
                return {}
            return {int(k): v for k, v in data.get("pages", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def store(self, content_hash: str, engine: str, pages: dict[int, dict[str, Any]]) -> None:
        """Add ``pages`` to a file's entry (atomically: readers never see half a file); errors only logged."""
        if not pages:
            return
        merged = {**self.load(content_hash, engine), **pages}
        target = self.path(content_hash)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"engine": engine, "pages": {str(k): v for k, v in sorted(merged.items())}}, fh)
            os.replace(tmp, target)
        except OSError as exc:  # a read-only or full cache costs a second OCR next time, nothing else
            logger.warning("could not write the OCR cache %s: %s", target, exc)


# --- the engine ------------------------------------------------------------------------------


def _engine() -> Any:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            from rapidocr import RapidOCR

            # its default models (PP-OCRv6 small detector and recogniser, multilingual) are in its wheel
            _ENGINE = RapidOCR(params={"Global.log_level": "warning"})
        return _ENGINE


def ocr_image(image: Any, *, scale: float, page_height: float) -> dict[str, Any]:
    """OCR a PIL image of a page rendered at ``scale`` pixels per point: ``{"text", "chars", "boxes"}``.

    Lines come top to bottom, each line's characters with their boxes in PDF
    points (``[left, bottom, right, top]``); lines are joined by newlines (with an empty box).
    """
    import numpy as np
    from PIL import ImageOps

    # a white margin: the detector misses lines that touch the image's edge (a cropped scan)
    padded = ImageOps.expand(image.convert("RGB"), border=_PAD, fill="white")
    out = _engine()(np.asarray(padded), return_word_box=True, return_single_char_box=True)
    texts = list(out.txts or [])
    quads = [] if out.boxes is None else [q.tolist() for q in out.boxes]
    words = list(out.word_results or [])
    chars: list[str] = []
    boxes: list[list[float]] = []
    lines: list[str] = []
    for quad, raw in zip(quads, texts, strict=False):
        text = str(raw).strip()
        if not text:
            continue
        # the engine drops a line's character boxes where it found none (the rest shift up): match by content
        found = words[0] if words and "".join(str(w[0]) for w in words[0]) == "".join(text.split()) else None
        if found is not None:
            words.pop(0)
        per_char = _aligned(text, found) if found is not None else None
        if per_char is None:
            per_char = _spread(quad, len(text))
        if chars:
            chars.append("\n")
            boxes.append([0.0, 0.0, 0.0, 0.0])
        for ch, q in zip(text, per_char, strict=True):
            xs, ys = [p[0] - _PAD for p in q], [p[1] - _PAD for p in q]
            chars.append(ch)
            boxes.append([round(min(xs) / scale, 1), round(page_height - max(ys) / scale, 1),
                          round(max(xs) / scale, 1), round(page_height - min(ys) / scale, 1)])
        lines.append(text)
    return {"text": "\n".join(lines), "chars": "".join(chars), "boxes": boxes}


def _aligned(text: str, found: Sequence[Any]) -> list[Any] | None:
    """One box per character of ``text`` from the engine's boxes of its non-space characters; a space gets
    the gap between its neighbours. None where they do not line up (one box per character)."""
    glyphs = [(str(w[0]), w[2]) for w in found]
    if any(len(g) != 1 for g, _ in glyphs):
        return None
    solid = iter(q for _, q in glyphs)
    out: list[Any] = [None if ch.isspace() else next(solid) for ch in text]
    for i, q in enumerate(out):
        if q is None:  # a space: from the right of the box before to the left of the box after
            before, after = out[i - 1], next(b for b in out[i + 1:] if b is not None)
            right, left = max(p[0] for p in before), min(p[0] for p in after)
            top = min(p[1] for p in before + after)
            bottom = max(p[1] for p in before + after)
            out[i] = [[right, top], [max(right, left), top], [max(right, left), bottom], [right, bottom]]
    return out


def _spread(quad: Sequence[Sequence[float]], n: int) -> list[list[list[float]]]:
    """A line's box cut into ``n`` equal character boxes (where the engine gave none)."""
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    left, right, top, bottom = min(xs), max(xs), min(ys), max(ys)
    step = (right - left) / max(1, n)
    return [[[left + i * step, top], [left + (i + 1) * step, top], [left + (i + 1) * step, bottom],
             [left + i * step, bottom]] for i in range(n)]


def _render(pdf: Any, number: int, *, dpi: int, max_pixels: int, shown: int) -> tuple[Any, float, float]:
    """Page ``number`` of an open pypdfium2 document as a PIL image: (image, scale, page height in points).

    Raises :class:`PageFailed` for a page too big to render within ``max_pixels`` at
    :data:`MIN_DPI`, or holding an embedded image over ``max_pixels`` (not decoded).
    """
    import pypdfium2.raw as pdfium_c

    page = pdf[number - 1]
    try:
        width, height = page.get_size()
        for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
            w, h = obj.get_px_size()
            if w * h > max_pixels:
                raise PageFailed(f"page {shown}: an embedded image of {w}x{h} pixels is over the cap of "
                                 f"{max_pixels:,} pixels (COLBERT_MODAL_OCR_MAX_PIXELS); not OCR'd")
        scale = dpi / 72.0
        if width * height * scale * scale > max_pixels:
            scale = math.sqrt(max_pixels / max(1.0, width * height))
            if scale * 72.0 < MIN_DPI:
                raise PageFailed(
                    f"page {shown}: {width / 72:.0f}x{height / 72:.0f} inches, over {max_pixels:,} pixels at "
                    f"{MIN_DPI} dpi (COLBERT_MODAL_OCR_MAX_PIXELS); not OCR'd")
        image = page.render(scale=scale).to_pil()
        return image, scale, height
    finally:
        page.close()


def ocr_page(pdf: Any, number: int, *, dpi: int, max_pixels: int, shown: int | None = None) -> dict[str, Any]:
    """Render and OCR one page of an open pypdfium2 document; :class:`PageFailed` where it cannot.

    ``shown``: the page number the messages name (default ``number``).
    """
    try:
        if min(pdf.get_page_size(number - 1)) < MIN_PAGE_SIDE:
            return {"text": "", "chars": "", "boxes": []}  # nothing legible fits; the engine would make things up
        image, scale, height = _render(pdf, number, dpi=dpi, max_pixels=max_pixels, shown=shown or number)
        low, high = image.convert("L").getextrema()
        if high - low < 16:  # one flat colour (a blank page): seconds of the engine for nothing
            return {"text": "", "chars": "", "boxes": []}
        return ocr_image(image, scale=scale, page_height=height)
    except PageFailed:
        raise
    except MemoryError as exc:
        raise PageFailed(f"page {shown or number}: out of memory rendering or OCR'ing it") from exc
    except Exception as exc:  # a corrupt image stream, an engine error: this page only
        raise PageFailed(f"page {shown or number}: could not be rendered or OCR'd ({type(exc).__name__}: {exc})") from exc


def _open(data: bytes, password: str | None) -> Any:
    import pypdfium2

    return pypdfium2.PdfDocument(data, password=password)


def read_pages(
    data: bytes, content_hash: str, numbers: Sequence[int], *, password: str | None, settings: OcrSettings,
    page_pdf: Any = None,
) -> tuple[dict[int, dict[str, Any]], dict[int, str], list[OcrJob]]:
    """OCR pages ``numbers`` of a PDF (its bytes ``data``), from the cache where they are there.

    Returns ``(pages, failures, jobs)``: each OCR'd page's entry (see :class:`OcrCache`),
    the reason per page that failed, and in remote mode (``settings.remote``) the
    pages to OCR on Modal (none OCR'd here; ``page_pdf(n)`` gives page ``n`` as a one-page PDF).
    """
    cache = OcrCache(settings.cache_dir)
    cached = cache.load(content_hash, settings.engine)
    pages = {n: cached[n] for n in numbers if n in cached}
    todo = [n for n in numbers if n not in pages]
    failures: dict[int, str] = {}
    jobs: list[OcrJob] = []
    if not todo:
        return pages, failures, jobs
    if settings.remote:
        remote_errors = settings.errors.get(content_hash)
        for n in todo:
            if remote_errors is not None:
                failures[n] = remote_errors.get(n, f"page {n}: not OCR'd on Modal")
            else:
                try:
                    page = page_pdf(n)
                except Exception as exc:  # a page pypdf cannot write out: this page only
                    failures[n] = f"page {n}: could not be cut out to OCR on Modal ({type(exc).__name__}: {exc})"
                    continue
                jobs.append(OcrJob(content_hash, n, page, settings.engine, settings.dpi, settings.max_pixels))
        return pages, failures, jobs
    fresh: dict[int, dict[str, Any]] = {}
    try:
        pdf = _open(data, password)
    except Exception as exc:
        return pages, {n: f"page {n}: pypdfium2 cannot open the file to render it ({exc})" for n in todo}, jobs
    try:
        for n in todo:
            try:
                fresh[n] = ocr_page(pdf, n, dpi=settings.dpi, max_pixels=settings.max_pixels)
            except PageFailed as exc:
                failures[n] = str(exc)
            if HEARTBEAT is not None:
                HEARTBEAT()
    finally:
        pdf.close()
    cache.store(content_hash, settings.engine, fresh)
    return {**pages, **fresh}, failures, jobs


def run_job(job: OcrJob) -> dict[str, Any]:
    """The body of the Modal OCR function: OCR page 1 of ``job.pdf``; :class:`PageFailed` where it cannot."""
    try:
        pdf = _open(job.pdf, None)
    except Exception as exc:
        raise PageFailed(f"page {job.page}: pypdfium2 cannot open it ({exc})") from exc
    try:
        return ocr_page(pdf, 1, dpi=job.dpi, max_pixels=job.max_pixels, shown=job.page)
    finally:
        pdf.close()


def settings_for(mode: str, *, remote: bool) -> OcrSettings:
    """The :class:`OcrSettings` of ``index(..., ocr=mode)``: here (the installed engine), or on Modal (the OCR
    image's). Without the extra, ``"auto"`` is off (with a warning naming it) and ``"force"`` an error."""
    from .errors import ConfigurationError, DependencyMissingError

    if mode not in MODES:
        raise ConfigurationError(f"ocr must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return OcrSettings(mode="off", hint="index with ocr='auto' (CLI: --ocr auto) to OCR them")
    version = lock_version() if remote else engine_version()
    if version is None:
        if mode == "force":
            raise DependencyMissingError(f"ocr='force' needs the OCR extra: {OCR_HINT}")
        return OcrSettings(mode="off", hint=f"to OCR them, install the OCR extra: {OCR_HINT}")
    dpi = dpi_setting()
    return OcrSettings(mode=mode, cache_dir=str(default_cache_dir()), engine=engine_id(version, dpi), dpi=dpi,
                       max_pixels=max_pixels_setting(), remote=remote)
