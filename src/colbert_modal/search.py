"""An open index generation: check queries, search it, shape the results.

Local mode (:class:`~colbert_modal.ColbertIndexer`) and the Modal search
containers (:class:`colbert_modal.remote.server.IndexServer`) both search
through :class:`LiveIndex`: the current generation of one index, opened
once and reopened when a newer one is published.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import ConfigurationError, EngineError, IndexStorageError
from .models import Chunk, SearchResult, SearchResults
from .store import Generation, IndexStore, Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SearchIndex

__all__ = ["LiveIndex", "OpenGeneration", "check_queries", "to_results"]

Hits = list[tuple[int, float]]


def check_queries(queries: Sequence[str], k: int) -> list[str]:
    """``queries`` as a list, after checking every query and ``k``; raises ConfigurationError."""
    if isinstance(queries, str):
        raise ConfigurationError("search_batch() takes a list of query strings; use search() for one")
    queries = list(queries)
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ConfigurationError(f"every query must be a non-empty string, got {q!r}")
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"query {q!r} holds characters that are not valid Unicode (lone surrogates); fix its text"
            ) from None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, got {k!r}")
    return queries


def to_results(hits: Hits, chunks: Sequence[Chunk]) -> SearchResults:
    """Engine hits (chunk position, score), best first, as :class:`SearchResult` records."""
    out = SearchResults()
    for rank, (pid, score) in enumerate(hits, start=1):
        c = chunks[pid]
        out.append(
            SearchResult(
                rank=rank,
                score=score,
                text=c.text,
                source=c.source,
                pages=c.pages,
                chunk_id=c.id,
                document_id=c.document_id,
                metadata=c.metadata,
            )
        )
    return out


class OpenGeneration:
    """One published generation with its engine index loaded, ready to search.

    ``model`` overrides where the checkpoint is loaded from (a Modal
    container loads a hub id from the copy baked into its image); by default
    it is the model the generation was built with.
    """

    def __init__(
        self,
        generation: Generation,
        *,
        model: str | None = None,
        verbose: bool = False,
        precision: str | None = None,
    ) -> None:
        from .engine import get_engine

        self.generation = generation
        self.chunks = generation.verified_chunks()
        engine = get_engine(model or generation.manifest.model, verbose=verbose, precision=precision)
        self.index: SearchIndex = engine.open(
            generation.engine_dir, generation.manifest.backend, [c.text for c in self.chunks]
        )

    @property
    def name(self) -> str:
        """The generation's directory name, e.g. ``"g000003"``."""
        return self.generation.path.name

    @property
    def manifest(self) -> Manifest:
        return self.generation.manifest

    def search_batch(self, queries: Sequence[str], k: int) -> list[SearchResults]:
        """One result list per query (queries already checked with :func:`check_queries`)."""
        if not queries:
            return []
        hits = self.index.search(list(queries), k)
        return [to_results(h, self.chunks) for h in hits]


class LiveIndex:
    """The current generation of the index in ``store``, reopened when a newer one is published.

    ``opener`` opens a generation given its name (default: in place, with
    :class:`OpenGeneration`). Thread-safe: concurrent callers share one
    open generation.
    """

    def __init__(self, store: IndexStore, opener: Callable[[str], OpenGeneration]) -> None:
        self.store = store
        self._opener = opener
        self._open: OpenGeneration | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> OpenGeneration | None:
        """The generation opened last, without checking for a newer one."""
        return self._open

    #: Times :meth:`current` tries again when a writer replaced the generation it was opening.
    retries = 5

    def current(self) -> OpenGeneration:
        """The open current generation; opens (or reopens) it if ``CURRENT`` moved.

        A writer may publish and prune between reading ``CURRENT`` and opening
        the generation it names; then the open fails and is retried with the
        new ``CURRENT``. An open that fails while ``CURRENT`` still names the
        same generation is a damaged index, and raises.
        """
        with self._lock:
            for attempt in range(self.retries + 1):
                name = self.store.current_generation_name()
                if name is None:
                    self.store.current()  # raises IndexNotFoundError with the message
                assert name is not None
                if self._open is not None and self._open.name == name:
                    return self._open
                try:
                    self._open = self._opener(name)
                    return self._open
                except (IndexStorageError, EngineError):
                    if attempt == self.retries or self.store.current_generation_name() == name:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

    def forget(self) -> None:
        """Drop the open generation (the next :meth:`current` opens it again)."""
        with self._lock:
            self._open = None
