"""The former name of :mod:`colbert_modal.records`, kept importable (and pickles naming it loadable).

In this library "model" means a ColBERT checkpoint; the pydantic records
(Document, Chunk, SearchResult, IndexReport, ...) live in ``records``.
"""

from __future__ import annotations

from .records import (
    Chunk,
    Document,
    FileWarning,
    IndexInfo,
    IndexReport,
    Page,
    RerankResult,
    SearchResult,
    SearchResults,
    SkippedFile,
)

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
]
