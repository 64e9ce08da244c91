"""The local runner: the index under ``index_root``, built and searched in this process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import IndexStorageError
from ..progress import Progress
from ..records import IndexInfo, IndexReport, RerankResult, SearchResults
from ..reranking import Item, default_model, rerank_items
from ..search import LiveIndex, OpenIndex
from ..sharding import apply as apply_sharded
from ..sharding import open_generation
from ..store import IndexStore, Manifest, load_generation
from . import Planner

__all__ = ["LocalRunner"]


class LocalRunner:
    """Writes under the store's lock; searches one :class:`~colbert_modal.search.LiveIndex` (thread-safe).

    ``backend``, ``verbose`` and ``precision`` as :class:`~colbert_modal.ColbertIndexer` takes them;
    ``lock_timeout``: seconds to wait for another writer.
    """

    def __init__(
        self, store: IndexStore, *, backend: str = "auto", lock_timeout: float = 0.0, verbose: bool = False,
        precision: str | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.lock_timeout = lock_timeout
        self.verbose = verbose
        self.precision = precision
        self.live = LiveIndex(store, self._open)
        self.where = f"under {store.root}"

    def check_model(self, model: str) -> None:
        """Any model this process can load."""

    def manifest(self) -> Manifest | None:
        return self.store.current().manifest if self.store.exists() else None

    def update(self, plan: Planner, *, rebuild: bool, must_exist: bool, progress: Progress) -> IndexReport:
        from ..engine import get_engine

        try:
            with self.store.lock(self.lock_timeout):
                manifest = self.store.current().manifest if must_exist else self._manifest_for_update(rebuild)
                report = apply_sharded(
                    self.store,
                    plan(manifest),
                    engine_factory=lambda m: get_engine(m, verbose=self.verbose, precision=self.precision),
                    backend=self.backend,
                    progress=progress,
                )
        finally:
            progress.close()
            self.live.forget()
        return report

    def _manifest_for_update(self, rebuild: bool) -> Manifest | None:
        """The manifest an update builds on; a rebuild ignores a damaged one."""
        try:
            return self.manifest()
        except IndexStorageError:
            if rebuild:
                return None
            raise

    def search_batch(
        self, queries: Sequence[str], k: int, where: dict[str, Any] | None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        return list(self.live.current().search_batch(queries, k, where, mode=mode, keyword_weight=keyword_weight))

    def info(self) -> IndexInfo:
        return self.store.current().info()

    def rerank(
        self, query: str, items: Sequence[Item], k: int | None, *, model: str | None, max_tokens: int | None
    ) -> list[RerankResult]:
        from ..chunking import DEFAULT_MAX_TOKENS
        from ..engine import get_engine

        manifest = self.manifest() if model is None or max_tokens is None else None
        model = model or (manifest.model if manifest is not None else default_model())
        max_tokens = max_tokens or (manifest.max_tokens if manifest is not None else DEFAULT_MAX_TOKENS)
        engine = get_engine(model, verbose=self.verbose, precision=self.precision)
        return rerank_items(engine, query, items, k, max_tokens=max_tokens)

    def drop(self) -> None:
        """Delete the index from disk entirely."""
        self.store.destroy()
        self.live.forget()

    def forget(self) -> None:
        self.live.forget()

    def close(self) -> None:
        self.live.forget()

    def _open(self, gen_name: str) -> OpenIndex:
        gen = load_generation(self.store.generation_path(gen_name))
        return open_generation(gen, verbose=self.verbose, precision=self.precision)
