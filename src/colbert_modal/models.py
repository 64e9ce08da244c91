"""The former name of :mod:`colbert_modal.records`, kept importable (and pickles naming it loadable).

In this library "model" means a ColBERT checkpoint; the pydantic records
(Document, Chunk, SearchResult, IndexReport, ...) live in ``records``.
"""

from __future__ import annotations

from .records import *  # noqa: F403
from .records import __all__ as __all__
