"""Reading input files safely: regular files only, hashes of the very bytes read, text in bounded sections.

Nothing here blocks on a named pipe or reads a device without end
(:func:`open_regular`), and a text file is decoded in sections of bounded
size, so that neither a huge file nor one without line breaks sits in memory
as one string more than once.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import CorruptFileError, FileAccessError

__all__ = [
    "TEXT_SECTION_CHARS",
    "HashingReader",
    "detect_encoding",
    "hash_file",
    "not_regular",
    "open_regular",
    "text_sections",
]

#: Text files are split into sections of about this many characters, so that
#: memory stays bounded however large the file is.
TEXT_SECTION_CHARS = 1 << 20


def not_regular(path: Path, mode: int) -> FileAccessError:
    """The error for a path that is not a regular file (``mode``: its ``st_mode``)."""
    kind = (
        "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"
    )
    return FileAccessError(path, f"not a regular file ({kind}); only regular files are read")


def open_regular(path: Path) -> IO[bytes]:
    """Open ``path`` for reading in binary, or raise FileAccessError if it is not a regular file.

    Opened without blocking and checked before anything is read: a named
    pipe never blocks the caller (it would wait for a writer, forever), a
    device is never read without end.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def hash_file(path: Path) -> str:
    """The SHA-256 of a regular file's bytes (FileAccessError for anything else: see :func:`open_regular`)."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detect_encoding(path: Path) -> str:
    """utf-8 (with or without BOM) when the whole file decodes, else cp1252/latin-1."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open_regular(path) as fh:
        first = fh.read(4)
        if first.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        fh.seek(0)
        try:
            for block in iter(lambda: fh.read(1 << 20), b""):
                if b"\x00" in block:
                    raise UnicodeDecodeError("utf-8", block, 0, 1, "NUL byte")
                decoder.decode(block)
            decoder.decode(b"", final=True)
            return "utf-8"
        except UnicodeDecodeError:
            pass
        fh.seek(0)
        sample = fh.read(1 << 16)
    if b"\x00" in sample:
        raise CorruptFileError(path, "binary content, not text (NUL bytes)")
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


class HashingReader(io.RawIOBase):
    """A binary file that feeds every byte read into ``sha``."""

    def __init__(self, fh: IO[bytes], sha: Any) -> None:
        self._fh = fh
        self._sha = sha

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._sha.update(memoryview(buffer)[:n])
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def text_sections(path: Path, encoding: str, sha: Any = None, size: int = TEXT_SECTION_CHARS) -> Iterator[str]:
    """Yield the file in sections of about ``size`` characters, cut at line ends.

    A line longer than ``size`` (a file without line breaks) is cut at a
    space, so that no section is much bigger than ``size``. ``sha`` (a
    hashlib object) receives the bytes read.
    """
    raw = HashingReader(open_regular(path), sha if sha is not None else hashlib.sha256())
    with io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors="replace", newline=None) as fh:
        buf: list[str] = []
        n = 0
        while line := fh.readline(size):
            if not line.endswith("\n") and len(line) == size:  # part of a long line: cut it at its last space
                cut = max(line.rfind(" "), line.rfind("\t")) + 1
                if cut > size // 2:
                    line, carry = line[:cut], line[cut:]
                    buf.append(line)
                    yield "".join(buf)
                    buf, n = [carry], len(carry)
                    continue
            buf.append(line)
            n += len(line)
            if n >= size:
                yield "".join(buf)
                buf, n = [], 0
        if buf:
            yield "".join(buf)
