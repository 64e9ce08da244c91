"""Where an indexer's work runs: one small protocol, two implementations.

:class:`~colbert_modal.ColbertIndexer` plans updates and checks arguments
itself, then hands the work to a :class:`Runner`, chosen from its ``mode``
once (``.local`` / ``.remote`` force one per call):

``runners.local.LocalRunner``
    This process: the index under ``index_root``, written under the
    store's lock, searched through one :class:`~colbert_modal.search.LiveIndex`.
``runners.remote.RemoteRunner``
    Modal: the index on the Volume, through a
    :class:`~colbert_modal.remote.client.RemoteSession` (whose transport, an
    ephemeral app run, the deployed app or the same bodies in-process, is
    picked once when the session opens).

(Named *runner*, not backend: ``backend=`` already means the engine's index
kind, ``"exact"`` or ``"plaid"``.) This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import UpdatePlan
    from ..progress import Progress
    from ..records import IndexInfo, IndexReport, RerankResult, SearchResults
    from ..reranking import Item
    from ..store import Manifest

__all__ = ["Planner", "Runner"]

#: Makes the update plan once the runner has read the index's manifest (None: no index yet),
#: under the index's lock where the runner has one.
Planner = Callable[["Manifest | None"], "UpdatePlan"]


class Runner(Protocol):
    """What does an indexer's work: plan-and-apply an update, search, describe, forget."""

    #: Where the index lives, as a message names it ("under /path", "on the Modal Volume 'x'").
    where: str

    def check_model(self, model: str) -> None:
        """Refuse a model this runner cannot load (remote: a local checkpoint directory)."""
        ...

    def update(self, plan: Planner, *, rebuild: bool, must_exist: bool, progress: Progress) -> IndexReport:
        """Read the manifest, plan with it, apply the plan; ``must_exist``: IndexNotFoundError if no index."""
        ...

    def search_batch(
        self, queries: Sequence[str], k: int, where: dict[str, Any] | None, *, mode: str = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResults]:
        """One result list per (checked) query; ``mode``/``keyword_weight`` as :meth:`ColbertIndexer.search` takes them."""
        ...

    def info(self) -> IndexInfo:
        ...

    def rerank(
        self, query: str, items: Sequence[Item], k: int | None, *, model: str | None, max_tokens: int | None
    ) -> list[RerankResult]:
        """``items`` scored for ``query``; ``model``/``max_tokens`` None: the index's, else the defaults."""
        ...

    def forget(self) -> None:
        """Drop what is loaded (the next search opens the index again)."""
        ...

    def close(self) -> None:
        ...
