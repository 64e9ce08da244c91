"""The records colbert_modal passes around, as pydantic models.

Every model forbids unknown fields, so a typo is an error rather than a
silent default. All of them pickle and serialise to JSON, which is how they
travel to and from Modal.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import display

__all__ = [
    "Chunk",
    "Document",
    "FileWarning",
    "IndexInfo",
    "IndexReport",
    "Page",
    "RerankResult",
    "SearchResult",
    "SearchResults",
    "SkippedFile",
    "TextRecord",
]

#: How a text record (:meth:`ColbertIndexer.index_texts <colbert_modal.ColbertIndexer.index_texts>`) is keyed
#: in an index's manifest and in its chunks' ``source``: ``"text:" + id``. A file's key is its absolute path,
#: which never starts so; hits, reports and ``info().sources`` show the record's id alone.
TEXT_KEY_PREFIX = "text:"


def text_key(record_id: str) -> str:
    """The manifest key (and stored chunk ``source``) of the text record ``record_id``."""
    return TEXT_KEY_PREFIX + record_id


def is_text_key(key: str) -> bool:
    """True for a text record's manifest key, False for a file's (an absolute path)."""
    return key.startswith(TEXT_KEY_PREFIX)


def public_source(key: str) -> str:
    """What a user sees for manifest key ``key``: a file's path as is, a text record's id."""
    return key[len(TEXT_KEY_PREFIX):] if key.startswith(TEXT_KEY_PREFIX) else key


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(_Record):
    """The text of one page (PDF) or one section (text file)."""

    number: int = Field(ge=1, description="1-based page number in the source file.")
    text: str


class Document(_Record):
    """One loaded file: its pages and where it came from."""

    id: str = Field(description="Content hash of the file (first 16 hex digits of SHA-256).")
    source: str = Field(description="Absolute path of the file.")
    content_hash: str = Field(description="Full SHA-256 of the file's bytes.")
    pages: list[Page]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages)


class TextRecord(_Record):
    """A text to index from memory (``ColbertIndexer.index_texts``): its ``id``, ``text`` and ``metadata``.

    The id keys the record in the index: indexing the same id again replaces
    it (re-encoded only if its text changed), ``delete_texts([id])`` removes
    it, and its hits carry it as ``source`` (with no pages).
    """

    id: str = Field(min_length=1, description="The record's id, unique in the index (not shared with files).")
    text: str
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="JSON scalars (or lists of them), searchable with ``where=``."
    )

    @classmethod
    def from_text(cls, text: str, metadata: dict[str, Any] | None = None) -> TextRecord:
        """A record whose id is derived from ``text``: the first 16 hex digits of the SHA-256 of its UTF-8 bytes.

        This is the id a plain string given to ``index_texts`` gets (the same text, the same id).
        """
        import hashlib

        return cls(id=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], text=text, metadata=metadata or {})


class Chunk(_Record):
    """A passage of at most ``max_tokens`` model tokens, never crossing files."""

    id: str = Field(description="Stable id: '<document id>-<position>'.")
    document_id: str
    source: str
    position: int = Field(ge=0, description="0-based position of the chunk in its file.")
    pages: list[int] = Field(description="1-based pages the chunk's text comes from.")
    text: str
    n_tokens: int = Field(ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResult(_Record):
    """One hit. ``rank`` is 1-based; higher ``score`` is better."""

    rank: int = Field(ge=1)
    score: float
    text: str
    source: str = Field(description="The file's absolute path; for a text record (index_texts), its id.")
    pages: list[int] = Field(description="1-based pages of the passage (empty for a text record).")
    chunk_id: str
    document_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def page(self) -> int | None:
        """The first page the passage comes from."""
        return self.pages[0] if self.pages else None

    def page_image(self, dpi: float = 72, *, password: str | None = None) -> Any:
        """The hit's first page as a PIL image, the passage's text highlighted where it is found.

        Needs the ``view`` extra (``pip install 'colbert-modal[view]'``),
        else :class:`~colbert_modal.DependencyMissingError`. Raises
        :class:`~colbert_modal.FileAccessError` if the file has moved since it
        was indexed, :class:`~colbert_modal.ConfigurationError` for a hit from
        a text file. ``password``: for an encrypted PDF.
        """
        from .errors import ConfigurationError
        from .view import render_page

        if self.page is None:  # a text record's hit (index_texts): its source is the record's id, not a file
            raise ConfigurationError(
                f"hit {self.chunk_id!r} has no page to show: it comes from text record {self.source!r} "
                "(index_texts), not from a file")
        return render_page(self.source, self.page, self.text, dpi=dpi, password=password)

    def _repr_html_(self) -> str:
        """In Jupyter: the page's thumbnail next to the hit's text (text only where no page can be drawn)."""
        import io

        from .errors import ColbertModalError

        png = None
        try:
            image = self.page_image(dpi=40)
        except ColbertModalError:
            image = None
        if image is not None:
            buf = io.BytesIO()
            image.save(buf, format="PNG", optimize=True)
            png = buf.getvalue()
        return display.result_html(self, None, png)


class RerankResult(_Record):
    """One text given to ``rerank``, scored for the query. ``rank`` is 1-based; higher ``score`` is better."""

    rank: int = Field(ge=1)
    score: float
    text: str
    id: str | None = Field(None, description="The record's id, as given (None for a plain string).")
    index: int = Field(ge=0, description="0-based position of the text in the list given.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResults(list):  # list[SearchResult] that renders as a table in notebooks
    """A plain ``list`` of :class:`SearchResult` that renders as a table in Jupyter.

    ``query`` is the query the hits answer (set by ``search`` and
    ``search_batch``; it survives pickling, and list equality ignores it).
    """

    query: str | None = None

    def __init__(self, hits: Any = (), query: str | None = None) -> None:
        super().__init__(hits)
        if query is not None:
            self.query = query

    def _repr_html_(self) -> str:
        return display.results_html(self, self.query)


class SkippedFile(_Record):
    """A file that was not indexed, and why."""

    path: str
    reason: str
    error: str = Field(description="Name of the colbert_modal error class, e.g. 'EncryptedPDFError'.")


class FileWarning(_Record):
    """A file that was indexed, with something the user should know."""

    path: str
    message: str


class IndexReport(_Record):
    """What one call of ``index`` did."""

    index_name: str
    indexed: list[str] = Field(default_factory=list, description="Files (re)indexed by this call.")
    unchanged: list[str] = Field(default_factory=list, description="Files already indexed with the same content.")
    removed: list[str] = Field(default_factory=list, description="Files whose chunks were dropped.")
    skipped: list[SkippedFile] = Field(default_factory=list)
    warnings: list[FileWarning] = Field(default_factory=list)
    metadata_updated: list[str] = Field(
        default_factory=list, description="Files whose metadata alone changed (nothing re-encoded)."
    )
    ocr_pages: dict[str, list[int]] = Field(
        default_factory=dict, description="Pages read by OCR (fresh or from the OCR cache), by file indexed."
    )
    chunks_written: int = Field(0, description="Chunks encoded by this call.")
    chunks_total: int = Field(0, description="Chunks in the index after this call.")
    documents_total: int = 0
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")

    @property
    def changed(self) -> bool:
        """True when this call changed the index."""
        return bool(self.indexed or self.removed or self.metadata_updated)

    @property
    def files_indexed(self) -> list[str]:
        return self.indexed

    @property
    def files_skipped(self) -> list[SkippedFile]:
        return self.skipped

    def _repr_html_(self) -> str:
        """In Jupyter: the counts, then tables of the skipped and the warned files."""
        return display.report_html(self)


class IndexInfo(_Record):
    """What an index on disk holds and how it was built."""

    name: str
    path: str
    model: str
    max_tokens: int
    overlap: int
    backend: str
    documents: int
    chunks: int
    generation: int
    created_at: str
    updated_at: str
    sources: list[str] = Field(default_factory=list)
    metadata_keys: dict[str, int] = Field(
        default_factory=dict, description="User metadata keys in use, with how many files have each."
    )
    shards: int = Field(1, description="Shards the index is split into (1: unsharded).")
    shard_chunks: dict[str, int] = Field(
        default_factory=dict, description="Chunks per shard of a sharded index, by shard id."
    )
