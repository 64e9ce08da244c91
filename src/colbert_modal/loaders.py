"""Paths in, :class:`~colbert_modal.records.Document` objects out.

PDFs are read page by page with pypdf; ``.txt`` and ``.md`` files are read as
text, in sections of bounded size so that a huge file never sits in memory as
one string. Folders are walked recursively.

A file that cannot be used raises a :class:`~colbert_modal.errors.LoadError`
subclass from :func:`load_file`; :func:`load_paths` collects those per file
as :class:`~colbert_modal.records.SkippedFile` entries and goes on with the
rest of the batch.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    CorruptFileError,
    EmptyDocumentError,
    EncryptedPDFError,
    FileAccessError,
    LoadError,
    NoTextLayerError,
    UnsupportedFileTypeError,
)
from .files import detect_encoding, hash_file, not_regular, open_regular, text_sections
from .ocr import OcrNeeded, OcrSettings, PendingOcr, alnum_count, needs_ocr, read_pages
from .records import Document, FileWarning, Page, SkippedFile

__all__ = [
    "LOADER_KEYS",
    "PDF_SUFFIXES",
    "TEXT_SUFFIXES",
    "LoadResult",
    "PasswordBook",
    "discover",
    "hash_file",
    "iter_documents",
    "load_file",
    "load_paths",
    "password_for",
]

logger = logging.getLogger(__name__)

PDF_SUFFIXES = frozenset({".pdf"})
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown"})
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TEXT_SUFFIXES
#: Every metadata key the loaders set on a Document (a user's metadata may not reuse one).
LOADER_KEYS = frozenset({"file_name", "page_count", "type", "encoding", "sections", "title", "author", "subject",
                         "ocr_pages", "ocr_engine"})

Passwords = str | Mapping[str, str] | None


@dataclass
class LoadResult:
    """Documents that loaded, files that did not, and warnings about the rest."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)


def _skip(path: str | Path, exc: LoadError) -> SkippedFile:
    return SkippedFile(path=str(path), reason=exc.reason, error=type(exc).__name__)


def discover(
    paths: Iterable[str | os.PathLike[str]], *, follow_symlinks: bool = False
) -> tuple[list[Path], list[SkippedFile]]:
    """Expand files and folders (recursively) into the files to load.

    Returns absolute file paths in a stable order, without duplicates, and the
    paths that cannot be used (missing, symlink loops, unsupported types,
    folders with nothing to read, names that are not valid UTF-8).

    Inside the folders given, a symlink to a file outside all of them, and a
    symlinked folder, are skipped and reported unless ``follow_symlinks``;
    followed folder links that lead back to a folder already walked (loops)
    are reported too. Paths given directly are always followed.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    given = [Path(os.path.abspath(Path(os.fspath(raw)).expanduser())) for raw in paths]
    roots = [_real(p) for p in given]
    for path in given:
        bad = _bad_name(path)
        if bad is not None:
            skipped.append(bad)
            continue
        try:
            st = path.stat()
        except OSError as exc:
            skipped.append(_skip(path, _access_error(path, exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            found = sorted(_walk(path, skipped, roots=roots, follow_symlinks=follow_symlinks))
            if not found:
                skipped.append(
                    _skip(path, EmptyDocumentError(path, "folder holds no .pdf, .txt or .md files"))
                )
            for f in found:
                add(f)
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(_skip(path, not_regular(path, st.st_mode)))
        elif path.suffix.lower() in SUPPORTED_SUFFIXES:
            add(path)
        else:
            skipped.append(_skip(path, _unsupported(path)))
    return files, skipped


def _walk(folder: Path, skipped: list[SkippedFile], *, roots: list[Path], follow_symlinks: bool) -> Iterator[Path]:
    def onerror(exc: OSError) -> None:
        skipped.append(_skip(exc.filename or folder, _access_error(Path(exc.filename or folder), exc)))

    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=follow_symlinks):
        here = _real(Path(dirpath))
        visited.add(here)
        kept: list[str] = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            p = Path(dirpath) / d
            if _bad_name(p) is not None:
                skipped.append(_bad_name(p))  # type: ignore[arg-type]
            elif not p.is_symlink():
                kept.append(d)
            elif not follow_symlinks:
                skipped.append(_skip(p, FileAccessError(
                    p, f"symlinked folder (to {_real(p)}) not followed; pass follow_symlinks=True to follow it")))
            elif _within(here, _real(p)):
                skipped.append(_skip(p, FileAccessError(p, f"symlink loop (to {_real(p)}, a folder it is in)")))
            elif _real(p) in visited:
                skipped.append(_skip(p, FileAccessError(p, f"symlinked folder {_real(p)} already walked")))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # .DS_Store, editor swap files, ...
            p = Path(dirpath) / name
            bad = _bad_name(p)
            if bad is not None:
                skipped.append(bad)
                continue
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                skipped.append(_skip(p, _unsupported(p)))
                continue
            try:
                st = p.stat()
            except OSError as exc:
                skipped.append(_skip(p, _access_error(p, exc)))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(_skip(p, not_regular(p, st.st_mode)))
                continue
            if p.is_symlink() and not follow_symlinks and not any(_within(_real(p), r) for r in roots):
                skipped.append(_skip(p, FileAccessError(
                    p, f"symlink to {_real(p)}, outside the folders given; pass follow_symlinks=True to follow it")))
                continue
            yield p


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _bad_name(path: Path) -> SkippedFile | None:
    """A skip entry for a path whose name is not valid UTF-8 (None when it is fine)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        return SkippedFile(
            path=shown, error="FileAccessError",
            reason="file name is not valid UTF-8; rename it (e.g. with convmv) to index it",
        )
    return None


def _unsupported(path: Path) -> UnsupportedFileTypeError:
    kind = f"'{path.suffix}'" if path.suffix else "without an extension"
    return UnsupportedFileTypeError(
        path, f"unsupported file type {kind} (reads .pdf, .txt, .md)"
    )


def _access_error(path: Path, exc: OSError) -> FileAccessError:
    if exc.errno == errno.ENOENT:
        reason = "no such file or folder"
    elif exc.errno == errno.ELOOP:
        reason = "symlink loop"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    else:
        reason = exc.strerror or str(exc)
    err = FileAccessError(path, reason)
    err.__cause__ = exc
    return err


class PasswordBook(Mapping[str, str]):
    """Passwords by file (path or bare file name), with a fallback for every other PDF.

    >>> book = PasswordBook({"a.pdf": "x"}, default="common")
    >>> password_for(Path("/docs/a.pdf"), book), password_for(Path("/docs/b.pdf"), book)
    ('x', 'common')
    """

    def __init__(self, by_file: Mapping[str, str], default: str | None = None) -> None:
        self._by_file = dict(by_file)
        self.default = default

    def lookup(self, path: Path) -> str | None:
        """The password for ``path``: by full path, by file name, else the fallback."""
        found = _match_password(path, self._by_file)
        return found if found is not None else self.default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.lookup(Path(key)) is not None

    def __getitem__(self, key: str) -> str:
        password = self.lookup(Path(key)) if isinstance(key, str) else None
        if password is None:
            raise KeyError(key)
        return password

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_file)

    def __len__(self) -> int:
        return len(self._by_file)


def _match_password(path: Path, passwords: Mapping[str, str]) -> str | None:
    for key in (str(path), path.name):
        if key in passwords:
            return passwords[key]
    for key, value in passwords.items():
        if key == path.name:
            return value
        try:
            if Path(key).expanduser().resolve() == path.expanduser().resolve():
                return value
        except OSError:
            continue
    return None


def password_for(path: Path, passwords: Passwords) -> str | None:
    """The password to try for the PDF at ``path`` (see :class:`PasswordBook` for mappings)."""
    if passwords is None or isinstance(passwords, str):
        return passwords
    if isinstance(passwords, PasswordBook):
        return passwords.lookup(path)
    return _match_password(path, passwords)


def load_file(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    warnings: list[FileWarning] | None = None,
    ocr: OcrSettings | None = None,
) -> Document:
    """Load one file. Raises a :class:`~colbert_modal.errors.LoadError` subclass.

    ``warnings`` (if given) receives notes about a file that did load, such as
    PDF pages without a text layer or a text file that was not UTF-8.
    ``ocr``: how to OCR PDF pages without a text layer (see :mod:`colbert_modal.ocr`; None: not at all).
    In remote mode it raises :class:`~colbert_modal.ocr.OcrNeeded` for pages to OCR on Modal first.
    """
    p = Path(os.path.abspath(Path(os.fspath(path)).expanduser()))
    notes: list[FileWarning] = warnings if warnings is not None else []
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise FileAccessError(p, "is a folder; pass it to load_paths() or index()")
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(p, st.st_mode)
        size = st.st_size
    except OSError as exc:
        if isinstance(exc, LoadError):
            raise
        raise _access_error(p, exc) from exc
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _unsupported(p)
    if size == 0:
        raise EmptyDocumentError(p, "empty file (0 bytes)")
    try:
        if suffix in PDF_SUFFIXES:
            return _load_pdf(p, password=password, warnings=notes, ocr=ocr)
        return _load_text(p, warnings=notes)
    except (LoadError, OcrNeeded):
        raise
    except OSError as exc:
        raise _access_error(p, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:  # an upstream parser failed in a way we did not foresee
        raise CorruptFileError(p, f"could not be read ({type(exc).__name__}: {exc})") from exc


class _CollectHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet_pypdf(path: Path) -> Iterator[None]:
    """Route pypdf's log records for one file into a single summary line.

    A bare pypdf reader prints hundreds of lines (fontTools notices, xref
    repairs) for some real PDFs. We keep them off the console and log one
    summary at DEBUG level on the ``colbert_modal.loaders`` logger.
    """
    pypdf_logger = logging.getLogger("pypdf")
    handler = _CollectHandler()
    old_propagate = pypdf_logger.propagate
    pypdf_logger.addHandler(handler)
    pypdf_logger.propagate = False
    try:
        yield
    finally:
        pypdf_logger.removeHandler(handler)
        pypdf_logger.propagate = old_propagate
        if handler.messages:
            first = handler.messages[0]
            if len(first) > 200:
                first = first[:197] + "..."
            logger.debug("%s: %d pypdf messages, first: %s", path, len(handler.messages), first)


def _load_pdf(path: Path, *, password: str | None, warnings: list[FileWarning], ocr: OcrSettings | None) -> Document:
    # Read once (pypdf would read it all into memory too): the hash is of the very bytes parsed,
    # even if the file changes meanwhile.
    with open_regular(path) as fh:
        if b"%PDF-" not in fh.read(1024):
            raise CorruptFileError(path, "not a PDF (no %PDF- header); is it another kind of file renamed .pdf?")
        fh.seek(0)
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()

    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

    with _quiet_pypdf(path):
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
        except (PdfReadError, PdfStreamError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise CorruptFileError(path, f"malformed or truncated PDF ({exc})") from exc
        if reader.is_encrypted:
            if not password:
                raise EncryptedPDFError(
                    path, "encrypted PDF; pass its password (passwords={'<file>': '...'})"
                )
            try:
                ok = reader.decrypt(password)
            except (NotImplementedError, PdfReadError) as exc:
                raise EncryptedPDFError(path, f"cannot decrypt ({exc})") from exc
            if not ok:
                raise EncryptedPDFError(path, "wrong password for encrypted PDF")
        try:
            n_pages = len(reader.pages)
        except FileNotDecryptedError as exc:  # pragma: no cover - guarded above
            raise EncryptedPDFError(path, "encrypted PDF") from exc
        except (PdfReadError, PdfStreamError, ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
            raise CorruptFileError(path, f"malformed PDF, its page tree cannot be read ({exc})") from exc
        if n_pages == 0:
            raise EmptyDocumentError(path, "PDF has no pages")

        pages: list[Page] = []
        empty: list[int] = []
        failed: list[int] = []
        layers: dict[int, str] = {}  # pages to OCR: their text layer
        for number in range(1, n_pages + 1):
            try:
                page = reader.pages[number - 1]
                text = page.extract_text() or ""
            except Exception:  # one damaged page must not lose the others
                logger.debug("%s: page %d could not be read", path, number, exc_info=True)
                if ocr is not None and ocr.on:
                    layers[number] = ""  # its text cannot be read; its image may be
                else:
                    failed.append(number)
                continue
            text = _clean(text)
            if ocr is not None and (ocr.mode == "force" or (ocr.on and needs_ocr(text, *_page_size(page)))):
                layers[number] = text
            elif text.strip():
                pages.append(Page(number=number, text=text))
            else:
                empty.append(number)
        metadata: dict[str, Any] = dict(_pdf_metadata(reader))
        if layers:
            assert ocr is not None
            ocr_pages = _ocr(path, data, digest, layers, reader, password, ocr, pages, empty, warnings)
            if ocr_pages:
                metadata.update({"ocr_pages": ocr_pages, "ocr_engine": ocr.engine})

    if not pages:
        if failed and not empty:
            raise CorruptFileError(path, f"none of its {n_pages} pages could be read")
        raise NoTextLayerError(path, f"no text layer on any of its {n_pages} page(s) (scanned images?){_hint(ocr)}")
    if empty:
        warnings.append(FileWarning(
            path=str(path), message=f"no text layer on page(s) {_ranges(empty)}{_hint(ocr)}; indexed the other pages",
        ))
    if failed:
        warnings.append(
            FileWarning(path=str(path), message=f"page(s) {_ranges(failed)} could not be read; indexed the other pages")
        )
    metadata.update({"file_name": path.name, "page_count": n_pages, "type": "pdf"})
    return Document(id=digest[:16], source=str(path), content_hash=digest, pages=pages, metadata=metadata)


def _page_size(page: Any) -> tuple[float, float]:
    try:
        box = page.mediabox
        return abs(float(box.width)), abs(float(box.height))
    except Exception:  # a broken MediaBox: judge the text alone
        return 0.0, 0.0


def _hint(ocr: OcrSettings | None) -> str:
    if ocr is None:
        return "; run OCR first"
    if ocr.on:
        return " (OCR found no text on them either)"
    return f"; {ocr.hint}" if ocr.hint else ""


def _ocr(
    path: Path, data: bytes, digest: str, layers: dict[int, str], reader: Any, password: str | None,
    ocr: OcrSettings, pages: list[Page], empty: list[int], warnings: list[FileWarning],
) -> list[int]:
    """OCR the pages of ``layers`` (number -> text layer) into ``pages``/``empty``; the numbers OCR'd.

    The OCR text is kept where it has more letters and digits than the text layer (``force``: any);
    a page that fails is a warning naming it. Remote mode: :class:`OcrNeeded` for pages not cached.
    """

    def page_pdf(n: int) -> bytes:
        from pypdf import PdfWriter

        writer = PdfWriter()
        writer.add_page(reader.pages[n - 1])
        buf = io.BytesIO()
        writer.write(buf)
        return buf.getvalue()

    got, failures, jobs = read_pages(data, digest, sorted(layers), password=password, settings=ocr, page_pdf=page_pdf)
    if jobs:
        raise OcrNeeded(PendingOcr(path=str(path), content_hash=digest, jobs=jobs))
    used: list[int] = []
    for n, layer in sorted(layers.items()):
        text = _clean(got[n]["text"]) if n in got else ""
        better = alnum_count(text) > 0 if ocr.mode == "force" else alnum_count(text) > alnum_count(layer)
        if better:
            pages.append(Page(number=n, text=text))
            used.append(n)
        elif layer.strip():
            pages.append(Page(number=n, text=layer))
        elif n not in failures:
            empty.append(n)
    pages.sort(key=lambda p: p.number)
    empty.sort()
    if used:
        warnings.append(FileWarning(path=str(path), message=f"OCR'd page(s) {_ranges(used)} ({ocr.engine})"))
    for reason in failures.values():
        warnings.append(FileWarning(path=str(path), message=f"OCR failed: {reason}; indexed the other pages"))
    return used


def _pdf_metadata(reader: object) -> dict[str, str]:
    """Title/author/subject if they can be read; broken metadata is ignored."""
    out: dict[str, str] = {}
    try:
        info = reader.metadata  # type: ignore[attr-defined]
        if info:
            for key, name in (("/Title", "title"), ("/Author", "author"), ("/Subject", "subject")):
                value = info.get(key)
                if value:
                    text = str(value).replace("\x00", "").strip()
                    if text:
                        out[name] = text
    except Exception:
        logger.debug("unreadable PDF metadata ignored", exc_info=True)
    return out


def _clean(text: str) -> str:
    # NUL bytes and lone surrogates break JSON and tokenizers downstream.
    text = text.replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out: list[str] = []
    start = prev = numbers[0]
    tail: list[int | None] = [*numbers[1:], None]
    for n in tail:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if start != prev else str(start))
        if n is not None:
            start = prev = n
    return ", ".join(out)


def _load_text(path: Path, *, warnings: list[FileWarning]) -> Document:
    encoding = detect_encoding(path)
    if encoding not in ("utf-8", "utf-8-sig"):
        warnings.append(FileWarning(path=str(path), message=f"not UTF-8; decoded as {encoding}"))
    pages: list[Page] = []
    sha = hashlib.sha256()
    for number, text in enumerate(text_sections(path, encoding, sha), start=1):
        if text.strip():
            pages.append(Page(number=number, text=_clean(text)))
    if not pages:
        raise EmptyDocumentError(path, "file holds only whitespace")
    digest = sha.hexdigest()  # of the very bytes decoded, even if the file changed meanwhile
    kind = "markdown" if path.suffix.lower() in (".md", ".markdown") else "text"
    metadata: dict[str, Any] = {"file_name": path.name, "type": kind, "encoding": encoding}
    if len(pages) > 1:
        metadata["sections"] = len(pages)
    return Document(id=digest[:16], source=str(path), content_hash=digest, pages=pages, metadata=metadata)


def iter_documents(
    files: Iterable[Path], *, passwords: Passwords = None, ocr: OcrSettings | None = None
) -> Iterator[Document | SkippedFile | FileWarning | PendingOcr]:
    """Load files one at a time, yielding documents, skips and warnings as they come.

    ``ocr``: see :func:`load_file`; in remote mode a file with pages to OCR on Modal
    yields a :class:`~colbert_modal.ocr.PendingOcr` (and nothing else) instead.
    """
    for path in files:
        notes: list[FileWarning] = []
        try:
            doc = load_file(path, password=password_for(path, passwords), warnings=notes, ocr=ocr)
        except LoadError as exc:
            logger.info("skipped %s", exc)
            yield _skip(path, exc)
            continue
        except OcrNeeded as exc:
            yield exc.pending
            continue
        yield from notes
        yield doc


def load_paths(paths: Iterable[str | os.PathLike[str]], *, passwords: Passwords = None) -> LoadResult:
    """Load every supported file under ``paths``; failures are collected, not raised."""
    files, skipped = discover(paths)
    result = LoadResult(skipped=list(skipped))
    for item in iter_documents(files, passwords=passwords):
        if isinstance(item, Document):
            result.documents.append(item)
        elif isinstance(item, SkippedFile):
            result.skipped.append(item)
        elif isinstance(item, FileWarning):
            result.warnings.append(item)
    return result
