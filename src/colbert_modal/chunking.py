"""Documents in, token-bounded :class:`~colbert_modal.models.Chunk` objects out.

Chunks are measured with the model's own tokenizer (the ``tokenizers``
library: no torch, no model weights), hold at most ``max_tokens`` tokens,
overlap their neighbour by ``overlap`` tokens, never cross files, and know the
pages their text comes from. A chunk boundary prefers the end of a sentence or
page, then the end of a word; it never splits a word. A chunk that ends at a
page or paragraph break is not overlapped by the next one.

Chunk ids are ``<document id>-<position>``: the same file with the same
settings gives the same ids.

>>> chunker = Chunker(WhitespaceTokenizer(), max_tokens=4, overlap=1)
>>> from colbert_modal.models import Document, Page
>>> doc = Document(id="abc", source="/x.txt", content_hash="abc",
...                pages=[Page(number=1, text="one two three. four five"), Page(number=2, text="six seven")])
>>> [(c.text, c.pages) for c in chunker.chunk(doc)]
[('one two three.', [1]), ('three. four five', [1]), ('six seven', [2])]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfigurationError, ModelLoadError
from .models import Chunk, Document

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_OVERLAP",
    "Chunker",
    "Tokenizer",
    "WhitespaceTokenizer",
    "default_overlap",
    "load_tokenizer",
]

DEFAULT_MAX_TOKENS = 256
DEFAULT_OVERLAP = 38  # default_overlap(DEFAULT_MAX_TOKENS)


def default_overlap(max_tokens: int) -> int:
    """The overlap used when none is given: 15% of the chunk size.

    >>> default_overlap(256)
    38
    """
    return round(max_tokens * 0.15)
_PAGE_JOIN = "\n\n"


class Tokenizer(Protocol):
    """What the chunker needs: token offsets into the text, no special tokens."""

    def offsets(self, text: str) -> list[tuple[int, int]]: ...


class WhitespaceTokenizer:
    """One token per whitespace-separated word. For tests and doctests."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (fast, Rust, no torch)."""

    def __init__(self, tokenizer: object, name: str = "") -> None:
        self._tok = tokenizer
        self.name = name

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
        return [(s, e) for s, e in enc.offsets if e > s]


def load_tokenizer(model: str | os.PathLike[str]) -> HFTokenizer:
    """The tokenizer of a ColBERT checkpoint: a local directory or a hub id.

    Reads ``tokenizer.json`` (or builds a WordPiece tokenizer from
    ``vocab.txt``); for a hub id, fetches only the tokenizer files.
    """
    from tokenizers import Tokenizer as _Tok

    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        tj = path / "tokenizer.json"
        if tj.is_file():
            return HFTokenizer(_Tok.from_file(str(tj)), str(path))
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
    return HFTokenizer(_Tok.from_file(hub_file), str(model))


@dataclass(frozen=True)
class _Tok:
    start: int  # offset in the joined document text
    end: int
    word_start: bool  # begins a word (preceded by whitespace or start of text)


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
        """Yield the chunks of one document, in order."""
        # Join the pages, remembering where each starts, and tokenize page by
        # page (bounded memory for big text files split into sections).
        text_parts: list[str] = []
        page_starts: list[tuple[int, int]] = []  # (offset, page number)
        toks: list[_Tok] = []
        pos = 0
        for i, page in enumerate(document.pages):
            if i:
                text_parts.append(_PAGE_JOIN)
                pos += len(_PAGE_JOIN)
            page_starts.append((pos, page.number))
            for s, e in self.tokenizer.offsets(page.text):
                word_start = s == 0 or page.text[s - 1].isspace()
                toks.append(_Tok(pos + s, pos + e, word_start))
            text_parts.append(page.text)
            pos += len(page.text)
        text = "".join(text_parts)

        for position, (lo, hi) in enumerate(self._windows(toks, text)):
            start, end = toks[lo].start, toks[hi - 1].end
            yield Chunk(
                id=f"{document.id}-{position:05d}",
                document_id=document.id,
                source=document.source,
                position=position,
                pages=_pages_between(page_starts, start, end),
                text=text[start:end],
                n_tokens=hi - lo,
                metadata=dict(document.metadata),
            )

    def _windows(self, toks: list[_Tok], text: str) -> Iterator[tuple[int, int]]:
        n = len(toks)
        lo = 0
        while lo < n:
            hi = min(lo + self.max_tokens, n)
            if hi < n:
                hi = self._best_end(toks, text, lo, hi)
            yield lo, hi
            if hi >= n:
                return
            if "\n\n" in text[toks[hi - 1].end : toks[hi].start]:
                lo = hi  # cut at a page or paragraph break: no overlap needed
                continue
            nxt = max(hi - self.overlap, lo + 1)
            # start the next chunk on a word boundary, never before lo + 1
            while nxt > lo + 1 and not toks[nxt].word_start:
                nxt -= 1
            if not toks[nxt].word_start:
                nxt = hi
            lo = nxt

    def _best_end(self, toks: list[_Tok], text: str, lo: int, hi: int) -> int:
        """Move the end back to a page/paragraph break or a sentence end (both
        only within the last 30% of the window), else to a word end."""
        floor = lo + max(1, int((hi - lo) * 0.7))
        for cut in range(hi, floor, -1):
            if "\n\n" in text[toks[cut - 1].end : toks[cut].start]:
                return cut
        for cut in range(hi, floor, -1):
            if toks[cut].word_start and _ends_sentence(text, toks[cut - 1].end):
                return cut
        for cut in range(hi, lo, -1):
            if toks[cut].word_start:
                return cut
        return hi  # one enormous "word": cut inside it


def _ends_sentence(text: str, end: int) -> bool:
    ch = text[end - 1] if end else ""
    nxt = text[end : end + 2]
    return ch in ".!?;:" or "\n" in nxt


def _pages_between(page_starts: list[tuple[int, int]], start: int, end: int) -> list[int]:
    pages = []
    for i, (offset, number) in enumerate(page_starts):
        next_offset = page_starts[i + 1][0] if i + 1 < len(page_starts) else float("inf")
        if offset < end and next_offset > start:
            pages.append(number)
    return pages
