"""Documents in, token-bounded :class:`~colbert_modal.records.Chunk` objects out.

Chunks are measured with the model's own tokenizer (the ``tokenizers``
library: no torch, no model weights), hold at most ``max_tokens`` tokens,
overlap their neighbour by ``overlap`` tokens, never cross files, and know the
pages their text comes from. A chunk boundary prefers the end of a sentence or
page, then the end of a word; it never splits a word. A chunk that ends at a
page or paragraph break is not overlapped by the next one.

Chunk ids are ``<document id>-<position>``: the same file with the same
settings gives the same ids.

>>> chunker = Chunker(WhitespaceTokenizer(), max_tokens=4, overlap=1)
>>> from colbert_modal.records import Document, Page
>>> doc = Document(id="abc", source="/x.txt", content_hash="abc",
...                pages=[Page(number=1, text="one two three. four five"), Page(number=2, text="six seven")])
>>> [(c.text, c.pages) for c in chunker.chunk(doc)]
[('one two three.', [1]), ('three. four five', [1]), ('six seven', [2])]
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from .errors import ConfigurationError, ModelLoadError
from .records import Chunk, Document, Page

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_OVERLAP",
    "Chunker",
    "Tokenizer",
    "WhitespaceTokenizer",
    "check_max_tokens",
    "default_overlap",
    "load_tokenizer",
]

DEFAULT_MAX_TOKENS = 256
DEFAULT_OVERLAP = 38  # default_overlap(DEFAULT_MAX_TOKENS)


def check_max_tokens(max_tokens: object) -> int:
    """``max_tokens`` if it is a chunk size the encoders take (8..508 tokens), else ConfigurationError."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 8 <= max_tokens <= 508:
        raise ConfigurationError(f"max_tokens must be between 8 and 508, got {max_tokens!r}")
    return max_tokens


def default_overlap(max_tokens: int) -> int:
    """The overlap used when none is given: 15% of the chunk size.

    >>> default_overlap(256)
    38
    """
    return round(max_tokens * 0.15)
_PAGE_JOIN = "\n\n"
#: Tokens a chunker's stream lets pile up behind the current chunk before it drops them.
_RELEASE_AT = 4096
#: A page is tokenized in pieces of about this many characters (a tokenizer needs
#: hundreds of bytes per token while it works: a whole 1 MB page took ~0.5 GB).
_PIECE_CHARS = 1 << 15


class Tokenizer(Protocol):
    """What the chunker needs: token offsets into the text, no special tokens."""

    def offsets(self, text: str) -> list[tuple[int, int]]: ...


class WhitespaceTokenizer:
    """One token per whitespace-separated word. For tests and doctests."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (fast, Rust, no torch), counting every token.

    Truncation and padding are switched off, whatever the checkpoint's
    ``tokenizer.json`` says (sentence-transformers saves switch both on, at
    128 tokens): the chunker must see all of a text to cut it into chunks that
    fit. A tokenizer that truncates anyway is an error, never a silent cut.
    """

    def __init__(self, tokenizer: object, name: str = "") -> None:
        for off in ("no_truncation", "no_padding"):  # both tokenizers.Tokenizer and its implementations have them
            if hasattr(tokenizer, off):
                getattr(tokenizer, off)()
        self._tok = tokenizer
        self.name = name

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
        if enc.overflowing:
            raise ModelLoadError(
                f"the tokenizer of {self.name or 'this checkpoint'} truncates texts (at {len(enc.ids)} tokens), "
                "so chunks cannot be measured; switch its truncation off"
            )
        return [(s, e) for s, e in enc.offsets if e > s]


def load_tokenizer(model: str | os.PathLike[str]) -> HFTokenizer:
    """The tokenizer of a ColBERT checkpoint: a local directory or a hub id.

    Reads ``tokenizer.json`` (or builds a WordPiece tokenizer from
    ``vocab.txt``); for a hub id, fetches only the tokenizer files. It counts
    every token of a text: truncation and padding set in the file are ignored.
    """
    from tokenizers import Tokenizer as _Tokenizer

    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        tj = path / "tokenizer.json"
        if tj.is_file():
            return HFTokenizer(_Tokenizer.from_file(str(tj)), str(path))
        vocab = path / "vocab.txt"
        if vocab.is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            lower = True
            cfg = path / "tokenizer_config.json"
            if cfg.is_file():
                import json

                lower = bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
            return HFTokenizer(BertWordPieceTokenizer(str(vocab), lowercase=lower), str(path))
        raise ModelLoadError(f"{path}: no tokenizer.json or vocab.txt in this checkpoint directory")
    if os.path.isabs(os.fspath(model)) or str(model).startswith("."):
        raise ModelLoadError(f"model {str(model)!r}: no such checkpoint directory")
    from .hub import resolve_hub_file

    hub_file = resolve_hub_file(str(model), "tokenizer.json")
    return HFTokenizer(_Tokenizer.from_file(hub_file), str(model))


def _piece_end(text: str, at: int, size: int | None = None) -> int:
    """Where the piece of ``text`` that starts at ``at`` ends: about ``size`` characters on.

    The cut is just before a space that follows a non-space: tokenizers split
    words there anyway (WordPiece, byte-level BPE and SentencePiece alike), so
    tokenizing the pieces one by one gives the tokens of the whole text.
    """
    size = size or _PIECE_CHARS
    if len(text) - at <= size:
        return len(text)
    for i in itertools.chain(range(at + size, at + size // 2, -1), range(at + size + 1, len(text))):
        if text[i].isspace() and not text[i - 1].isspace():
            return i
    return len(text)


class _Tok(NamedTuple):
    start: int  # offset in the joined document text
    end: int
    word_start: bool  # begins a word (preceded by whitespace or start of text)


class _Stream:
    """A document's tokens, read a piece of a page at a time as the chunker asks for them.

    Only the tokens (and text) from the start of the current chunk on are
    kept, so memory follows :data:`_PIECE_CHARS`, not the document, and a
    chunker stopped early (``max_chunks_per_file``) never tokenizes the rest.
    Offsets are into the pages joined with blank lines, as if the whole text
    were one string.
    """

    def __init__(self, tokenizer: Tokenizer, pages: Iterable[Page]) -> None:
        self._tokenizer = tokenizer
        self._pages = iter(pages)
        self._page: Page | None = next(self._pages, None)
        self._at = 0  # where the next piece of _page starts
        self._toks: list[_Tok] = []
        self._base = 0  # index of _toks[0] among all tokens
        self._text = ""
        self._tbase = 0  # offset of _text[0] in the joined text
        self._end = 0  # offset of the end of the text read so far
        self.page_offsets: list[int] = []
        self.page_numbers: list[int] = []

    def has(self, i: int) -> bool:
        """Whether token ``i`` exists (reading on until it is there or nothing is left)."""
        while i >= self._base + len(self._toks):
            if not self._read():
                return False
        return True

    def _read(self) -> bool:
        """Tokenize the next piece of text; False where none is left."""
        page = self._page
        if page is None:
            return False
        text, at, pos = page.text, self._at, self._end
        if at == 0:
            self.page_offsets.append(pos)
            self.page_numbers.append(page.number)
        cut = _piece_end(text, at)
        piece = text[at:cut]
        self._toks.extend(
            _Tok(pos + s, pos + e, at + s == 0 or text[at + s - 1].isspace()) for s, e in self._tokenizer.offsets(piece)
        )
        if cut < len(text):
            self._at = cut
        else:
            self._page, self._at = next(self._pages, None), 0
            if self._page is not None:
                piece += _PAGE_JOIN
        self._text += piece
        self._end += len(piece)
        return True

    @property
    def count(self) -> int:
        """Tokens read so far (all of them once :meth:`has` said False)."""
        return self._base + len(self._toks)

    def tok(self, i: int) -> _Tok:
        return self._toks[i - self._base]

    def text(self, start: int, end: int) -> str:
        while end > self._end and self._read():  # a cut looks a character or two past the last token
            pass
        return self._text[start - self._tbase : end - self._tbase]

    def release(self, lo: int) -> None:
        """Forget the tokens before ``lo`` and their text (in bulk, so that each is dropped once)."""
        k = lo - self._base
        if k < _RELEASE_AT or 2 * k < len(self._toks):
            return
        del self._toks[:k]
        self._base = lo
        cut = self._toks[0].start if self._toks else self._end
        self._text = self._text[cut - self._tbase :]
        self._tbase = cut

    def pages_between(self, start: int, end: int) -> list[int]:
        """The numbers of the pages that text ``[start, end)`` comes from."""
        first = max(bisect.bisect_right(self.page_offsets, start) - 1, 0)
        return self.page_numbers[first : bisect.bisect_left(self.page_offsets, end)]


class Chunker:
    """Split documents into overlapping, token-bounded chunks."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        overlap: int | None = None,
    ) -> None:
        if max_tokens < 8 and not isinstance(tokenizer, WhitespaceTokenizer):
            raise ConfigurationError(f"max_tokens must be at least 8, got {max_tokens}")
        if max_tokens < 1:
            raise ConfigurationError(f"max_tokens must be positive, got {max_tokens}")
        if overlap is None:
            overlap = default_overlap(max_tokens)
        if not 0 <= overlap < max_tokens:
            raise ConfigurationError(f"overlap must be in [0, max_tokens), got {overlap}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap

    def chunk_many(self, documents: Iterable[Document]) -> Iterator[Chunk]:
        for doc in documents:
            yield from self.chunk(doc)

    def chunk(self, document: Document) -> Iterator[Chunk]:
        """Yield the chunks of one document, in order.

        Pages are tokenized as the chunks reach them: stopping early (e.g.
        ``itertools.islice``) leaves the rest of the document untokenized.
        """
        stream = _Stream(self.tokenizer, document.pages)
        for position, (lo, hi) in enumerate(self._windows(stream)):
            start, end = stream.tok(lo).start, stream.tok(hi - 1).end
            yield Chunk(
                id=f"{document.id}-{position:05d}",
                document_id=document.id,
                source=document.source,
                position=position,
                pages=stream.pages_between(start, end),
                text=stream.text(start, end),
                n_tokens=hi - lo,
                metadata=dict(document.metadata),
            )

    def _windows(self, s: _Stream) -> Iterator[tuple[int, int]]:
        lo = 0
        if not s.has(0):
            return
        while True:
            hi = lo + self.max_tokens
            hi = self._best_end(s, lo, hi) if s.has(hi) else s.count
            yield lo, hi
            if not s.has(hi):
                return
            if "\n\n" in s.text(s.tok(hi - 1).end, s.tok(hi).start):
                lo = hi  # cut at a page or paragraph break: no overlap needed
            else:
                nxt = max(hi - self.overlap, lo + 1)
                # start the next chunk on a word boundary, never before lo + 1
                while nxt > lo + 1 and not s.tok(nxt).word_start:
                    nxt -= 1
                lo = nxt if s.tok(nxt).word_start else hi
            s.release(lo)

    def _best_end(self, s: _Stream, lo: int, hi: int) -> int:
        """Move the end back to a page/paragraph break or a sentence end (both
        only within the last 30% of the window), else to a word end."""
        floor = lo + max(1, int((hi - lo) * 0.7))
        for cut in range(hi, floor, -1):
            if "\n\n" in s.text(s.tok(cut - 1).end, s.tok(cut).start):
                return cut
        for cut in range(hi, floor, -1):
            if s.tok(cut).word_start and _ends_sentence(s, s.tok(cut - 1).end):
                return cut
        for cut in range(hi, lo, -1):
            if s.tok(cut).word_start:
                return cut
        return hi  # one enormous "word": cut inside it


def _ends_sentence(s: _Stream, end: int) -> bool:
    ch = s.text(end - 1, end) if end else ""
    nxt = s.text(end, end + 2)
    return ch in ".!?;:" or "\n" in nxt
