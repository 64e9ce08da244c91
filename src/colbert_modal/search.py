"""An open index generation: check queries, search it, shape the results.

What can be searched, from the bottom up (one name per level):

- an engine index (:class:`~colbert_modal.engine.SearchIndex`: ``ExactIndex``
  or ``PlaidIndex``): one format's files, searched by chunk position;
- an :class:`OpenIndex`: one published generation with its chunks, searched
  into :class:`~colbert_modal.records.SearchResult` s. Three kinds:
  :class:`OpenGeneration` (an unsharded index),
  :class:`~colbert_modal.sharding.OpenShards` (every shard of a sharded one,
  merged) and :class:`~colbert_modal.sharding.OpenShard` (one shard of it);
- a :class:`LiveIndex`: the current generation of one index, opened once and
  reopened when a newer one is published. Local mode searches through one;
  the Modal search containers' :class:`~colbert_modal.remote.server.IndexServer`
  wraps one around its local copies of the Volume's generations.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .engine import Hits, SearchIndex, get_engine
from .errors import ConfigurationError, EngineError, IndexStorageError
from .filters import ChunkColumns, parse_where
from .keyword import HYBRID_DEPTH, KEYWORD_FILE, RRF_K, KeywordIndex, KeywordStats, check_mode
from .records import Chunk, SearchResult, SearchResults, public_source
from .store import Generation, IndexStore, Manifest

__all__ = [
    "LiveIndex",
    "OpenGeneration",
    "OpenIndex",
    "check_queries",
    "fuse",
    "hybrid_depth",
    "result_key",
    "score_key",
    "search_part",
    "to_results",
]


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


def score_key(score: float) -> float:
    """``score`` as the float32 it was computed in: the value ties are decided on.

    The engines score in float32 (float16 embeddings, float32 sums); a score
    that went through a float64 sum, JSON or pickling compares equal to the
    same chunk's score computed elsewhere once rounded back to float32.
    """
    try:
        return float(struct.unpack("f", struct.pack("f", score))[0])
    except OverflowError:  # beyond float32's range: keep it as is
        return float(score)


def _chunk_position(chunk_id: str) -> int:
    """The position of a chunk in its file, from its id ``'<document id>-<position>'`` (-1 if none)."""
    tail = chunk_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def _key(score: float, source: str, pages: Sequence[int], chunk_id: str) -> tuple[float, str, int, int, str]:
    return (-score_key(score), source, pages[0] if pages else 0, _chunk_position(chunk_id), chunk_id)


def result_key(result: SearchResult) -> tuple[float, str, int, int, str]:
    """The order of hits: best score first; equal scores by source, first page, position in the file, chunk id.

    The same key sorts every list of hits (exact and PLAID, one shard or
    several, local or remote), so a query on an index gives the same list
    every time. Scores are compared as float32 (:func:`score_key`).
    """
    return _key(result.score, result.source, result.pages, result.chunk_id)


def to_results(hits: Hits, chunks: Sequence[Chunk], query: str | None = None, k: int | None = None) -> SearchResults:
    """Engine hits (chunk position, score) as :class:`SearchResult` records answering ``query``, best first.

    The hits are sorted by :func:`result_key` and the best ``k`` kept: an
    engine may return more than ``k`` (every chunk tied with the ``k``-th
    score), and the tie rule picks among them.
    """
    ordered = sorted(  # by the source a hit shows (a text record's id), as result_key sorts merged lists
        hits, key=lambda h: _key(h[1], public_source(chunks[h[0]].source), chunks[h[0]].pages, chunks[h[0]].id)
    )
    out = SearchResults(query=query)
    for rank, (pid, score) in enumerate(ordered[:k] if k is not None else ordered, start=1):
        c = chunks[pid]
        out.append(
            SearchResult(
                rank=rank,
                score=score,
                text=c.text,
                source=public_source(c.source),
                pages=c.pages,
                chunk_id=c.id,
                document_id=c.document_id,
                metadata=c.metadata,
            )
        )
    return out


class OpenIndex:
    """One opened generation, ready to search: its :class:`Generation`, ``name`` and ``manifest``.

    Subclasses load what they search and implement :meth:`colbert_search`,
    :meth:`keyword_stats` and :meth:`keyword_search`; :meth:`search_batch`
    combines them by ``mode``.
    """

    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    @property
    def name(self) -> str:
        """The generation's directory name, e.g. ``"g000003"``."""
        return self.generation.path.name

    @property
    def manifest(self) -> Manifest:
        return self.generation.manifest

    def search_batch(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        """One result list per (checked) query, best first; ``where``: a filter (:mod:`colbert_modal.filters`).

        ``mode``: ``"colbert"`` (MaxSim), ``"keyword"`` (BM25, :mod:`colbert_modal.keyword`) or
        ``"hybrid"``: both rankings, each :func:`hybrid_depth` deep, fused by :func:`fuse`.
        """
        check_mode(mode, keyword_weight)
        if mode == "colbert":
            return self.colbert_search(queries, k, where)
        parse_where(where)
        stats = self.keyword_stats(queries)
        if mode == "keyword":
            return self.keyword_search(queries, k, where, stats)
        depth = hybrid_depth(k)
        colbert = self.colbert_search(queries, depth, where)
        keyword = self.keyword_search(queries, depth, where, stats)
        return [fuse(c, w, k, keyword_weight, q) for q, c, w in zip(queries, colbert, keyword, strict=True)]

    def colbert_search(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None
    ) -> list[SearchResults]:
        """ColBERT's ``k`` best per query."""
        raise NotImplementedError  # pragma: no cover - interface

    def keyword_stats(self, queries: Sequence[str]) -> list[KeywordStats]:
        """Each query's BM25 statistics here (:class:`~colbert_modal.keyword.KeywordIndex.stats`)."""
        raise NotImplementedError  # pragma: no cover - interface

    def keyword_search(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None, stats: Sequence[KeywordStats]
    ) -> list[SearchResults]:
        """BM25's ``k`` best per query, scored with ``stats`` (one per query: the whole index's)."""
        raise NotImplementedError  # pragma: no cover - interface


def hybrid_depth(k: int) -> int:
    """How many hits of each ranking hybrid search fuses for ``k`` results."""
    return max(k, HYBRID_DEPTH)


def fuse(
    colbert: Sequence[SearchResult], keyword: Sequence[SearchResult], k: int, keyword_weight: float = 1.0,
    query: str | None = None,
) -> SearchResults:
    """Reciprocal rank fusion: a chunk scores ``1 / (60 + its ColBERT rank) + keyword_weight / (60 + its
    BM25 rank)`` (a term only where it is in that list); the best ``k``, by :func:`result_key`."""
    scores: dict[str, float] = {}
    hits: dict[str, SearchResult] = {}
    for weight, ranking in ((1.0, colbert), (float(keyword_weight), keyword)):
        for rank, r in enumerate(ranking, start=1):
            hits.setdefault(r.chunk_id, r)
            scores[r.chunk_id] = scores.get(r.chunk_id, 0.0) + weight / (RRF_K + rank)
    pooled = sorted((hits[c].model_copy(update={"score": s}) for c, s in scores.items() if s > 0), key=result_key)
    return SearchResults([r.model_copy(update={"rank": i}) for i, r in enumerate(pooled[:k], start=1)], query=query)


def search_part(
    opened: OpenIndex, queries: Sequence[str], k: int, where: Mapping[str, Any] | None, part: str,
    stats: Sequence[KeywordStats] | None,
) -> list[Any]:
    """One shard's part of a sharded search (a Modal shard container's): ``part`` ``"colbert"``: its ColBERT
    lists; ``"stats"``: its keyword statistics; ``"keyword"``: its BM25 lists scored with the whole index's
    ``stats``; ``"hybrid"``: its ColBERT lists then its BM25 lists, each :func:`hybrid_depth` deep."""
    if part == "colbert":
        return opened.colbert_search(queries, k, where)
    if part == "stats":
        return opened.keyword_stats(queries)
    if stats is None or len(stats) != len(queries) or part not in ("keyword", "hybrid"):
        raise ConfigurationError(f"a shard search of part {part!r} needs one keyword statistics entry per query")
    if part == "keyword":
        return opened.keyword_search(queries, k, where, stats)
    depth = hybrid_depth(k)
    return [*opened.colbert_search(queries, depth, where), *opened.keyword_search(queries, depth, where, stats)]


class OpenGeneration(OpenIndex):
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
        super().__init__(generation)
        self.chunks = generation.verified_chunks()
        self._columns: ChunkColumns | None = None  # built on the first filtered search
        self._columns_lock = threading.Lock()
        self._keyword: KeywordIndex | None = None  # opened (or built) on the first keyword search
        engine = get_engine(model or generation.manifest.model, verbose=verbose, precision=precision)
        self.index: SearchIndex = engine.open(
            generation.engine_dir, generation.manifest.backend, [c.text for c in self.chunks]
        )

    def colbert_search(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None
    ) -> list[SearchResults]:
        """One result list per query (queries already checked with :func:`check_queries`).

        ``where`` (see :mod:`colbert_modal.filters`): rank only the chunks
        that match it; the filter is checked before any query is encoded.
        """
        conditions = parse_where(where)
        subset = self.select(conditions) if conditions else None
        if not queries:
            return []
        if subset is not None and len(subset) == 0:
            return [SearchResults(query=q) for q in queries]
        hits = self.index.search(list(queries), k, subset) if subset is not None else self.index.search(list(queries), k)
        return [to_results(h, self.chunks, q, k) for q, h in zip(queries, hits, strict=True)]

    def keyword_index(self) -> KeywordIndex:
        """The generation's keyword index: its ``keyword.sqlite``, or (an index made before keyword
        files) the same index built in memory from its chunks on first use."""
        with self._columns_lock:
            if self._keyword is None:
                path = self.generation.path / KEYWORD_FILE
                self._keyword = (KeywordIndex.open(path) if path.is_file()
                                 else KeywordIndex.in_memory([c.text for c in self.chunks]))
            return self._keyword

    def keyword_stats(self, queries: Sequence[str]) -> list[KeywordStats]:
        return self.keyword_index().stats(queries)

    def keyword_search(
        self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None, stats: Sequence[KeywordStats]
    ) -> list[SearchResults]:
        conditions = parse_where(where)
        subset = self.select(conditions) if conditions else None
        index = self.keyword_index()
        return [to_results(index.search(q, k, subset, st), self.chunks, q, k) for q, st in zip(queries, stats, strict=True)]

    def select(self, conditions: Any) -> Any:
        """The positions (sorted int array) of the chunks matching parsed ``where`` conditions."""
        with self._columns_lock:
            if self._columns is None:
                self._columns = ChunkColumns(self.chunks)
        return self._columns.select(conditions)


class LiveIndex:
    """The current generation of the index in ``store``, reopened when a newer one is published.

    ``opener`` opens a generation given its name (default: in place, with
    :class:`OpenGeneration`). Thread-safe: concurrent callers share one
    open generation.
    """

    def __init__(self, store: IndexStore, opener: Callable[[str], OpenIndex]) -> None:
        self.store = store
        self._opener = opener
        self._open: OpenIndex | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> OpenIndex | None:
        """The generation opened last, without checking for a newer one."""
        return self._open

    #: Times :meth:`current` tries again when a writer replaced the generation it was opening.
    retries = 5

    def current(self) -> OpenIndex:
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
