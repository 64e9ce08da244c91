"""Small file makers for tests (PDFs with a known text per page, broken files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def make_text_pdf(path: Path, pages: list[str]) -> Path:
    """Write a real PDF with one Helvetica text line per page (a text layer pypdf reads)."""
    objects: list[bytes] = []
    n = len(pages)
    # 1: catalog, 2: pages, 3: font, then (page, content) pairs
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 11 Tf 40 750 Td ({safe}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    return write_pdf(path, objects)


def write_pdf(path: Path, objects: list[bytes]) -> Path:
    """Write ``objects`` (object 1 the catalog) as a PDF file with its cross-reference table; returns ``path``."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def kill_when_reached(proc: Any, marker: Path, what: str, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as it writes ``marker`` (it reached ``what``); fails if it exits or times out first."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"the process exited before {what}"
            assert time.monotonic() < deadline, f"the process never reached {what}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def write_texts(folder: Path, texts: dict[str, str]) -> Path:
    """Write each ``name: text`` of ``texts`` as a UTF-8 file (text plus a newline) in ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text + "\n", encoding="utf-8")
    return folder


def make_blank_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF whose pages have no text layer at all (like a scan without OCR)."""
    from pypdf import PdfWriter

    w = PdfWriter()
    for _ in range(pages):
        w.add_blank_page(width=612, height=792)
    with path.open("wb") as fh:
        w.write(fh)
    return path


def assert_same_results(a: list[list[Any]], b: list[list[Any]]) -> None:
    """Same hits with the same scores, best first; hits of equal score may come in either order."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y)
        assert [r.rank for r in y] == list(range(1, len(y) + 1))
        for rx, ry in zip(x, y, strict=True):
            assert rx.score == pytest.approx(ry.score, abs=1e-4)
        key = lambda r: (round(r.score, 3), r.chunk_id)  # noqa: E731
        cut = x[-1].score if x else 0.0  # the tie at the cut-off may pick different chunks
        assert sorted(map(key, (r for r in x if r.score > cut + 1e-3))) == sorted(
            map(key, (r for r in y if r.score > cut + 1e-3))
        )


def read_or_die(path: Path, password: str | None, **kwargs: Any) -> list:
    """A loader-process reader (``colbert_modal.loadpool.READER``) that ends its process on files named ``die-*``.

    ``die-exit*``: ``os._exit(3)``; ``die-kill*``: SIGKILL, as the kernel's OOM
    killer would; anything else reads normally.
    """
    import os
    import signal

    from colbert_modal.loadpool import read_file

    if path.name.startswith("die-exit"):
        os._exit(3)
    if path.name.startswith("die-kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    return read_file(path, password, **kwargs)


def read_or_hang(path: Path, password: str | None, **kwargs: Any) -> list:
    """A loader-process reader that never returns on files named ``hang*``, as a parser stuck in a loop would.

    Before it hangs it writes its pid to ``$LOADER_TEST_MARKERS/<pid>`` (when
    that is set), so a test knows the loader process is busy with the file.
    """
    import os
    import time

    from colbert_modal.loadpool import read_file

    if path.name.startswith("hang"):
        markers = os.environ.get("LOADER_TEST_MARKERS")
        if markers:
            Path(markers, str(os.getpid())).write_text(str(path), encoding="utf-8")
        time.sleep(300)
    return read_file(path, password, **kwargs)


def change_after_reading(path: Path) -> None:
    """What happens to a file just after a loader has read it, by its name: ``grow*`` gets a line
    with the word "zeppelin" appended, ``gone*`` is deleted; others stay as they are."""
    if path.name.startswith("grow"):
        with path.open("a", encoding="utf-8") as fh:
            fh.write("A zeppelin came by later.\n")
    elif path.name.startswith("gone"):
        path.unlink()


def read_then_change(path: Path, password: str | None, **kwargs: Any) -> list:
    """A loader-process reader that reads a file, then changes it (:func:`change_after_reading`)."""
    from colbert_modal.loadpool import read_file

    items = read_file(path, password, **kwargs)
    change_after_reading(path)
    return items
