"""The remote runner: the index on the Modal Volume, planned here and applied in a Modal container."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..dispatch import await_, bridged
from ..errors import IndexNotFoundError, IndexStorageError
from ..pipeline import nothing_to_index
from ..progress import Progress
from ..records import IndexInfo, IndexReport, RerankResult, SearchResults
from ..remote import VOLUME_NAME
from ..remote.client import RemoteSession
from ..remote.volumes import check_remote_model
from ..reranking import Item
from . import Planner

__all__ = ["RemoteRunner"]


class RemoteRunner:
    """Index ``name`` on the Volume, through ``session`` (opened by the indexer, closed by :meth:`close`)."""

    def __init__(self, session: RemoteSession, name: str, *, backend: str = "auto", lock_timeout: float = 0.0) -> None:
        self.session = session
        self.name = name
        self.backend = backend
        self.lock_timeout = lock_timeout
        self.where = f"on the Modal Volume {VOLUME_NAME!r}"

    @property
    def closed(self) -> bool:
        return self.session.closed

    def check_model(self, model: str) -> None:
        check_remote_model(model, self.session)

    def update(self, plan: Planner, *, rebuild: bool, must_exist: bool, progress: Progress) -> IndexReport:
        """:meth:`_update`; in an ``.aio`` call, in a worker thread (planning loads and chunks files here)."""
        if bridged():
            import asyncio

            return await_(asyncio.to_thread(self._update, plan, rebuild=rebuild, must_exist=must_exist,
                                            progress=progress))
        return self._update(plan, rebuild=rebuild, must_exist=must_exist, progress=progress)

    def _update(self, plan: Planner, *, rebuild: bool, must_exist: bool, progress: Progress) -> IndexReport:
        """Plan here against the Volume's manifest (loading and chunking run on this machine), apply on Modal.

        The write lease is taken in the container; a plan made against a
        generation that moved meanwhile is refused there and nothing is lost.
        """
        try:
            try:
                manifest = self.session.manifest(self.name)
            except IndexStorageError:
                if not rebuild:
                    raise
                manifest = None  # a rebuild repairs a damaged index, as locally
            if manifest is None and must_exist:
                raise IndexNotFoundError(f"no index named {self.name!r} {self.where}")
            made = plan(manifest)
            if manifest is None and not made.new_chunks:
                raise nothing_to_index(made)  # with the report; no GPU container started
            shard_count = made.settings.shard_count or (manifest.shard_count if manifest is not None else 1)
            return self.session.apply(made, backend=self.backend, lock_timeout=self.lock_timeout, progress=progress,
                                      shard_count=shard_count)
        finally:
            progress.close()

    def search_batch(
        self, queries: Sequence[str], k: int, where: dict[str, Any] | None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        how: dict[str, Any] = {"mode": mode, "keyword_weight": keyword_weight} if mode != "colbert" else {}
        if bridged():  # an .aio call: modal's .remote.aio, awaited on the caller's loop
            return await_(self.session.search_batch_aio(self.name, list(queries), k, where=where, **how))
        return list(self.session.search_batch(self.name, list(queries), k, where=where, **how))

    def info(self) -> IndexInfo:
        if bridged():
            return await_(self.session.info_aio(self.name))
        return self.session.info(self.name)

    def rerank(
        self, query: str, items: Sequence[Item], k: int | None, *, model: str | None, max_tokens: int | None
    ) -> list[RerankResult]:
        """In a warm Searcher container of this index (where it is sharded, the first shard's)."""
        if model is not None:
            self.check_model(model)
        return self.session.rerank(self.name, query, list(items), k, model=model, max_tokens=max_tokens)

    def ocr_pages(self, jobs: list[Any]) -> list[Any]:
        """OCR scanned pages (``ocr.OcrJob`` s) on Modal, one CPU container per page at most; results in order."""
        return self.session.ocr_pages(jobs)

    def forget(self) -> None:
        """Nothing is loaded here: the Searcher containers follow new generations themselves."""

    def close(self) -> None:
        self.session.close()
