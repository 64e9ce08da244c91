"""See a hit where it is: render its PDF page with the passage highlighted, or open the file there.

:func:`render_page` needs the ``view`` extra (``pip install 'colbert-modal[view]'``:
pypdfium2 renders the page and gives each character's box; Pillow draws).
The passage is found on the page by its letters and digits alone (case,
spacing, punctuation and hyphenation ignored), so text that the loader
cleaned up still matches; where it cannot be found the page is shown
unmarked. :func:`open_file` hands a file to the platform's opener.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, CorruptFileError, DependencyMissingError, EncryptedPDFError, FileAccessError

__all__ = ["HIGHLIGHT", "find_passage", "line_boxes", "open_file", "render_page"]

VIEW_HINT = "pip install 'colbert-modal[view]'"
#: Highlight colour (RGBA): a translucent yellow, like a marker.
HIGHLIGHT = (255, 214, 0, 110)
#: Letters and digits matched to find where a passage starts on its page.
_ANCHOR = 40

Box = tuple[float, float, float, float]  # left, bottom, right, top in PDF points


def _pdfium() -> Any:
    try:
        import pypdfium2
        import pypdfium2.raw
        from PIL import Image  # noqa: F401
    except ImportError as exc:
        raise DependencyMissingError(
            f"showing a hit's page needs pypdfium2 and Pillow ({exc.name} is missing): {VIEW_HINT}"
        ) from exc
    return pypdfium2


def _normalised(chars: Sequence[str]) -> tuple[str, list[int]]:
    """The letters and digits of ``chars``, lowercased, with the index each came from."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(chars):
        if ch.isalnum():
            out.append(ch.lower())
            where.append(i)
    return "".join(out), where


def find_passage(page_chars: Sequence[str], passage: str) -> tuple[int, int] | None:
    """The char index range ``[start, end)`` of ``passage`` on a page of ``page_chars``, or None.

    The passage may go on past the page (a chunk spanning pages): the range
    then ends where the page's text stops matching.

    >>> chars = list("Intro. The quick brown fox-\\njumps over it. End")
    >>> start, end = find_passage(chars, "the quick brown foxjumps over it")
    >>> "".join(chars[start:end])
    'The quick brown fox-\\njumps over it'
    """
    page, where = _normalised(page_chars)
    text, _ = _normalised(list(passage))
    if not page or not text:
        return None
    start = -1
    for size in (_ANCHOR, _ANCHOR // 2, 12):
        anchor = text[:size]
        if len(anchor) < min(size, len(text)):
            continue
        start = page.find(anchor)
        if start != -1:
            break
    if start == -1:
        return None
    n = 0
    while start + n < len(page) and n < len(text) and page[start + n] == text[n]:
        n += 1
    return where[start], where[start + n - 1] + 1


def line_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Character boxes merged into one box per line (boxes that overlap vertically and follow each other)."""
    lines: list[list[float]] = []
    for left, bottom, right, top in boxes:
        if right <= left or top <= bottom:
            continue  # spaces and line breaks have empty boxes
        if lines:
            cur = lines[-1]
            overlap = min(cur[3], top) - max(cur[1], bottom)
            if overlap > 0.5 * min(cur[3] - cur[1], top - bottom) and left >= cur[0] - 1:
                cur[0], cur[1], cur[2], cur[3] = min(cur[0], left), min(cur[1], bottom), max(cur[2], right), max(cur[3], top)
                continue
        lines.append([left, bottom, right, top])
    return [(a, b, c, d) for a, b, c, d in lines]


def render_page(
    source: str | os.PathLike[str],
    page: int,
    passage: str | None = None,
    *,
    dpi: float = 72,
    password: str | None = None,
) -> Any:
    """Page ``page`` (1-based) of the PDF ``source`` as a PIL image, ``passage`` highlighted where found.

    The image's ``info["highlight"]`` holds the highlighted boxes in pixels
    (``(left, top, right, bottom)``), empty if the passage was not found.
    """
    pdfium = _pdfium()
    import pypdfium2.raw as pdfium_c
    from PIL import Image, ImageDraw

    path = Path(source)
    if not path.is_file():
        raise FileAccessError(
            path,
            "the hit's source file is not there any more (moved or deleted?); re-index the folder it moved to",
        )
    if path.suffix.lower() != ".pdf":
        raise ConfigurationError(f"{path}: page images are for PDFs; this hit comes from a {path.suffix or 'text'} file")
    try:
        pdf = pdfium.PdfDocument(str(path), password=password)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise EncryptedPDFError(path, "the PDF is encrypted; pass password=...") from exc
        raise CorruptFileError(path, f"pypdfium2 cannot open it ({exc})") from exc
    try:
        if not 1 <= page <= len(pdf):
            raise ConfigurationError(f"{path} has {len(pdf)} pages; there is no page {page}")
        pdf_page = pdf[page - 1]
        scale = dpi / 72
        image = pdf_page.render(scale=scale).to_pil().convert("RGB")
        boxes: list[tuple[int, int, int, int]] = []
        if passage:
            textpage = pdf_page.get_textpage()
            chars = [chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i)) for i in range(textpage.count_chars())]
            found = find_passage(chars, passage)
            char_boxes: list[Box] = []
            if found is not None:
                char_boxes = [textpage.get_charbox(i, loose=True) for i in range(*found)]
            else:  # a scanned page: the characters OCR read there, and their boxes
                char_boxes = _ocr_boxes(path, page, passage)
            if char_boxes:
                height = pdf_page.get_height()
                for left, bottom, right, top in line_boxes(char_boxes):
                    boxes.append(
                        (int(left * scale), int((height - top) * scale), int(right * scale) + 1,
                         int((height - bottom) * scale) + 1)
                    )
            textpage.close()
        if boxes:
            overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
            draw = ImageDraw.Draw(overlay)
            for box in boxes:
                draw.rectangle(box, fill=HIGHLIGHT)
            image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
        image.info["highlight"] = boxes
        pdf_page.close()
        return image
    finally:
        pdf.close()


def _ocr_boxes(path: Path, page: int, passage: str) -> list[Box]:
    """The boxes of ``passage`` on page ``page`` of ``path`` as OCR read it (the OCR cache), or []."""
    import hashlib

    from .ocr import OcrCache, default_cache_dir

    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    entry = OcrCache(default_cache_dir()).load(sha.hexdigest()).get(page)
    if not entry:
        return []
    chars, boxes = entry.get("chars", ""), entry.get("boxes", [])
    found = find_passage(list(chars), passage) if len(chars) == len(boxes) else None
    return [(b[0], b[1], b[2], b[3]) for b in boxes[found[0]:found[1]]] if found is not None else []


def open_file(
    path: str | os.PathLike[str], page: int | None = None, *, run: Callable[[list[str]], Any] | None = None
) -> str:
    """Open ``path`` in the platform's viewer, at ``page`` where the viewer honours it; returns what was opened.

    Linux (``xdg-open``) and macOS (``open``) get a ``file://...#page=N`` URI
    for a PDF (browsers' PDF viewers open it at the page; other viewers the
    file); Windows gets the path (``os.startfile``).
    """
    from .display import file_uri

    p = Path(path)
    if not p.exists():
        raise FileAccessError(p, "the file is not there any more (moved or deleted?)")
    if sys.platform == "win32":  # pragma: no cover - Windows only
        startfile = getattr(os, "startfile")  # noqa: B009 - absent elsewhere
        startfile(str(p))
        return str(p)
    target = file_uri(str(p.absolute()), page)
    command = ["open" if sys.platform == "darwin" else "xdg-open", target]
    runner = run or (lambda cmd: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        runner(command)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"cannot open {p}: {command[0]} is not installed here") from exc
    return target
