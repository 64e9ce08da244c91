"""The bad-input corpus: every kind of broken file ends in the report with its reason."""

from __future__ import annotations

import logging
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from colbert_modal.errors import (
    CorruptFileError,
    EmptyDocumentError,
    EncryptedPDFError,
    FileAccessError,
    LoadError,
    NoTextLayerError,
    UnsupportedFileTypeError,
)
from colbert_modal.loaders import discover, load_file, load_paths
from helpers import make_blank_pdf, make_text_pdf

PDFS = Path(__file__).parent / "data" / "pdfs"


def test_pdf_pages_are_numbered_from_one() -> None:
    doc = load_file(PDFS / "pdflatex-4-pages.pdf")
    assert [p.number for p in doc.pages] == [1, 2, 3, 4]
    assert doc.metadata["page_count"] == 4
    assert doc.id == doc.content_hash[:16]
    assert doc.source == str((PDFS / "pdflatex-4-pages.pdf").absolute())


def test_encrypted_pdf_without_password() -> None:
    with pytest.raises(EncryptedPDFError, match="pass its password") as info:
        load_file(PDFS / "encrypted-libreoffice-writer-password.pdf")
    assert info.value.path.endswith("encrypted-libreoffice-writer-password.pdf")


def test_encrypted_pdf_with_password() -> None:
    doc = load_file(PDFS / "encrypted-libreoffice-writer-password.pdf", password="openpassword")
    assert doc.pages and doc.pages[0].text.strip()


def test_encrypted_pdf_with_wrong_password() -> None:
    with pytest.raises(EncryptedPDFError, match="wrong password"):
        load_file(PDFS / "encrypted-libreoffice-writer-password.pdf", password="nope")


def test_passwords_by_file_name_in_a_batch(tmp_path: Path) -> None:
    shutil.copy(PDFS / "encrypted-libreoffice-writer-password.pdf", tmp_path / "a.pdf")
    shutil.copy(PDFS / "encrypted-password-example.pdf", tmp_path / "b.pdf")
    result = load_paths([tmp_path], passwords={"a.pdf": "openpassword"})
    assert [Path(d.source).name for d in result.documents] == ["a.pdf"]
    assert [(Path(s.path).name, s.error) for s in result.skipped] == [("b.pdf", "EncryptedPDFError")]


def test_truncated_pdf(tmp_path: Path) -> None:
    data = (PDFS / "pdflatex-4-pages.pdf").read_bytes()
    (tmp_path / "t.pdf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="t.pdf"):
        load_file(tmp_path / "t.pdf")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "z.pdf").write_bytes(b"")
    with pytest.raises(EmptyDocumentError, match="0 bytes"):
        load_file(tmp_path / "z.pdf")
    (tmp_path / "z.md").write_bytes(b"")
    with pytest.raises(EmptyDocumentError):
        load_file(tmp_path / "z.md")


def test_text_renamed_pdf(tmp_path: Path) -> None:
    (tmp_path / "notes.pdf").write_text("just some text, not a PDF\n", encoding="utf-8")
    with pytest.raises(CorruptFileError, match="not a PDF"):
        load_file(tmp_path / "notes.pdf")


def test_scanned_pdf_without_text_layer(tmp_path: Path) -> None:
    make_blank_pdf(tmp_path / "scan.pdf", pages=3)
    with pytest.raises(NoTextLayerError, match="OCR"):
        load_file(tmp_path / "scan.pdf")


def test_partly_scanned_pdf_names_the_empty_pages() -> None:
    notes: list = []
    doc = load_file(PDFS / "images-only-imagemagick.pdf", warnings=notes)
    assert [p.number for p in doc.pages] == [1, 2, 3, 6]
    assert "page(s) 4-5" in notes[0].message


def test_broken_metadata_does_not_fail_the_load(tmp_path: Path) -> None:
    pdf = make_text_pdf(tmp_path / "meta.pdf", ["penguin on page one", "walrus on page two"])
    data = pdf.read_bytes().replace(b"/Root 1 0 R", b"/Root 1 0 R /Info 99 0 R")  # dangling /Info
    pdf.write_bytes(data)
    doc = load_file(pdf)
    assert [p.number for p in doc.pages] == [1, 2]


def test_malformed_real_pdf_is_reported_or_read() -> None:
    # pypdf repairs this one; either outcome must be a Document or a LoadError, never a crash
    try:
        doc = load_file(PDFS / "malformed-issue-932.pdf")
    except LoadError as exc:
        assert "malformed-issue-932.pdf" in str(exc)
    else:
        assert doc.pages


def test_non_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("Grüße aus Köln, café crème\n".encode("cp1252"))
    notes: list = []
    doc = load_file(tmp_path / "latin.txt", warnings=notes)
    assert "Grüße aus Köln" in doc.pages[0].text
    assert "not UTF-8" in notes[0].message


def test_binary_file_named_txt(tmp_path: Path) -> None:
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CorruptFileError, match="binary"):
        load_file(tmp_path / "blob.txt")


def test_empty_folder_missing_path_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "deck.pptx").write_bytes(b"x")
    result = load_paths([tmp_path / "empty", tmp_path / "missing.pdf", tmp_path / "deck.pptx"])
    reasons = {Path(s.path).name: (s.error, s.reason) for s in result.skipped}
    assert reasons["empty"][0] == "EmptyDocumentError"
    assert reasons["missing.pdf"] == ("FileAccessError", "no such file or folder")
    assert reasons["deck.pptx"][0] == "UnsupportedFileTypeError"
    assert result.documents == []


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "real.md").write_text("a walrus\n", encoding="utf-8")
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # folder loop
    (folder / "self.md").symlink_to(folder / "self.md")  # file loop
    result = load_paths([folder])
    assert [Path(d.source).name for d in result.documents] == ["real.md"]
    loops = [s for s in result.skipped if s.path.endswith("self.md")]
    assert loops and loops[0].reason == "symlink loop" and loops[0].error == "FileAccessError"


def test_hidden_files_are_ignored_and_order_is_stable(tmp_path: Path) -> None:
    for name in ("b.md", "a.txt", ".DS_Store", "c.md"):
        (tmp_path / name).write_text("walrus\n", encoding="utf-8")
    files, skipped = discover([tmp_path, tmp_path / "a.txt"])
    assert [f.name for f in files] == ["a.txt", "b.md", "c.md"]  # no duplicates
    assert skipped == []


def test_large_text_file_is_streamed_in_sections(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    line = "the walrus and the penguin share an umbrella in the harbour.\n"
    with big.open("w", encoding="utf-8") as fh:
        for _ in range(200_000):  # ~12 MB
            fh.write(line)
    size = big.stat().st_size
    tracemalloc.start()
    doc = load_file(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(doc.pages) >= 10  # sections of about 1 MiB, numbered like pages
    assert sum(len(p.text) for p in doc.pages) == size
    # the text itself must be held; no more than a couple of copies of it at once
    assert peak < 3 * size


def test_load_errors_pickle_and_read_well() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(EncryptedPDFError("/x/a.pdf", "encrypted PDF")))
    assert (err.path, err.reason, str(err)) == ("/x/a.pdf", "encrypted PDF", "/x/a.pdf: encrypted PDF")
    access = FileAccessError("/x/b.md", "permission denied")
    assert str(access) == "/x/b.md: permission denied" and isinstance(access, OSError)
    assert isinstance(UnsupportedFileTypeError("/x", "nope"), LoadError)


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "secret.md"
    p.write_text("x", encoding="utf-8")
    p.chmod(0)
    with pytest.raises(FileAccessError, match="permission denied"):
        load_file(p)


def test_pypdf_noise_stays_off_the_console(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    # malformed-issue-932 makes pypdf log xref repairs; they are summarised at DEBUG
    caplog.set_level(logging.DEBUG, logger="colbert_modal")
    try:
        load_file(PDFS / "malformed-issue-932.pdf")
    except LoadError:
        pass
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_skipped_before_anything_opens_it(tmp_path: Path) -> None:
    import threading

    from colbert_modal.loaders import hash_file

    os.mkfifo(tmp_path / "pipe.txt")  # nobody ever writes to it: opening it to read would wait forever
    (tmp_path / "note.txt").write_text("a walrus\n", encoding="utf-8")
    files, skipped = discover([tmp_path, tmp_path / "pipe.txt"])
    assert files == [tmp_path / "note.txt"]
    assert [(Path(s.path).name, s.error) for s in skipped] == [("pipe.txt", "FileAccessError")] * 2
    assert "not a regular file (a named pipe (FIFO))" in skipped[0].reason

    outcome: list[BaseException | str] = []

    def attempt(fn) -> None:  # type: ignore[no-untyped-def]
        try:
            outcome.append(str(fn(tmp_path / "pipe.txt")))
        except BaseException as exc:
            outcome.append(exc)

    for fn in (load_file, hash_file):
        outcome.clear()
        t = threading.Thread(target=attempt, args=(fn,), daemon=True)
        t.start()
        t.join(timeout=20)
        if t.is_alive():
            os.close(os.open(tmp_path / "pipe.txt", os.O_WRONLY | os.O_NONBLOCK))  # release it, then fail
            pytest.fail(f"{fn.__name__} blocked on a named pipe")
        (exc,) = outcome
        assert isinstance(exc, FileAccessError) and "not a regular file" in str(exc), exc
