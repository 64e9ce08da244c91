"""``ColbertIndexer``: load -> chunk -> dispatch to the local or remote engine."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from .chunking import DEFAULT_MAX_TOKENS, Chunker, load_tokenizer
from .engine import BACKENDS, check_precision
from .errors import ConfigurationError
from .loaders import Passwords
from .models import IndexInfo, IndexReport, SearchResult, SearchResults
from .pipeline import Settings, UpdatePlan, apply_update, plan_deletion, plan_update
from .store import Generation, IndexStore, Manifest, default_index_root, validate_index_name

__all__ = ["DEFAULT_MODEL", "ColbertIndexer", "Mode"]

DEFAULT_MODEL = "colbert-ir/colbertv2.0"
Mode = Literal["local", "remote"]
R = TypeVar("R")


class _Dispatcher(Generic[R]):
    """A method that runs in the indexer's mode, or explicitly ``.local`` / ``.remote``.

    Reads like a Modal function: ``indexer.index(paths)`` runs in
    ``indexer.mode``; ``indexer.index.local(paths)`` and
    ``indexer.index.remote(paths)`` force one side.
    """

    def __init__(self, local: Callable[..., R]) -> None:
        self._local = local
        self._remote: Callable[..., R] | None = None
        functools.update_wrapper(self, local)  # type: ignore[arg-type]

    def remote_impl(self, fn: Callable[..., R]) -> _Dispatcher[R]:
        self._remote = fn
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _Bound(self, obj)


class _Bound(Generic[R]):
    def __init__(self, dispatcher: _Dispatcher[R], obj: ColbertIndexer) -> None:
        self._d = dispatcher
        self._obj = obj
        self.__doc__ = dispatcher._local.__doc__
        self.__name__ = dispatcher._local.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if self._obj.mode == "remote":
            return self.remote(*args, **kwargs)
        return self.local(*args, **kwargs)

    def local(self, *args: Any, **kwargs: Any) -> R:
        """Run in this process, on this machine's CPU/GPU."""
        return self._d._local(self._obj, *args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> R:
        """Run on Modal (index on a Modal Volume)."""
        assert self._d._remote is not None
        return self._d._remote(self._obj, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<dispatchable {type(self._obj).__name__}.{self.__name__} (mode={self._obj.mode!r})>"


def dispatchable(fn: Callable[..., R]) -> _Dispatcher[R]:
    return _Dispatcher(fn)


class ColbertIndexer:
    """A named ColBERT index over your files, searched in-process or on Modal.

    Parameters
    ----------
    name:
        Index name: letters, digits, '-' and '_'.
    model:
        A Hugging Face hub id or a local checkpoint directory. Defaults to the
        model an existing index was built with, else ``$COLBERT_MODAL_MODEL``,
        else ``colbert-ir/colbertv2.0``.
    index_root:
        Where local indexes live. Default ``$COLBERT_MODAL_INDEX_ROOT``, else a
        per-user data directory (never the working directory).
    mode:
        ``"local"`` (default) runs the engine in this process; ``"remote"``
        runs it on Modal with the index on a Volume.
    max_tokens, overlap:
        Chunk size in model tokens and overlap. Default: what an existing
        index was built with, else 256 tokens and 15% overlap.
    backend:
        ``"auto"`` (default), ``"exact"`` or ``"plaid"``; see
        :mod:`colbert_modal.engine`.
    lock_timeout:
        Seconds to wait for another process writing the same index.
    progress:
        Show progress bars (default: only when stderr is a terminal).
    gpu:
        Remote mode: the Modal GPU type (default: L4, falling back to A10G, T4).
    remote_app:
        Remote mode: ``"ephemeral"`` (default; starts the Modal app for this
        indexer's session) or ``"deployed"`` (uses ``modal deploy``'s app).
        Default from ``$COLBERT_MODAL_REMOTE_APP``.
    precision:
        Local mode: what the encoders compute in. ``"auto"`` (default, or
        ``$COLBERT_MODAL_PRECISION``): bfloat16 on CPUs with AMX for exact
        indexes and queries (~2.5x faster indexing and batch search; PLAID
        builds stay float32), colbert-ai's float16 on a GPU, float32
        elsewhere. ``"fp32"`` or ``"bf16"`` force one.
    """

    def __init__(
        self,
        name: str,
        *,
        model: str | os.PathLike[str] | None = None,
        index_root: str | os.PathLike[str] | None = None,
        mode: Mode = "local",
        max_tokens: int | None = None,
        overlap: int | None = None,
        backend: str = "auto",
        lock_timeout: float = 0.0,
        progress: bool | None = None,
        gpu: str | None = None,
        remote_app: Literal["ephemeral", "deployed"] | None = None,
        precision: Literal["auto", "fp32", "bf16"] | None = None,
        verbose: bool = False,
    ) -> None:
        self.name = validate_index_name(name)
        if mode not in ("local", "remote"):
            raise ConfigurationError(f"mode must be 'local' or 'remote', got {mode!r}")
        self.mode: Mode = mode
        self.index_root = Path(index_root).expanduser().absolute() if index_root is not None else default_index_root()
        self.store = IndexStore(self.index_root, self.name)
        self._model_arg = os.fspath(model) if model is not None else None
        if max_tokens is not None and not 8 <= max_tokens <= 508:
            raise ConfigurationError(f"max_tokens must be between 8 and 508, got {max_tokens}")
        if overlap is not None and not 0 <= overlap < (max_tokens or DEFAULT_MAX_TOKENS):
            raise ConfigurationError(f"overlap must be in [0, max_tokens), got {overlap}")
        self._max_tokens_arg = max_tokens
        self._overlap_arg = overlap
        if backend not in BACKENDS:
            raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.lock_timeout = lock_timeout
        self.progress = progress
        self.gpu = gpu
        self.remote_app = remote_app
        self.precision = check_precision(precision)
        self.verbose = verbose
        self._searcher: tuple[str, Any, list[Any]] | None = None
        self._search_lock = threading.Lock()
        self._remote_session: Any = None

    def __repr__(self) -> str:
        return f"ColbertIndexer({self.name!r}, mode={self.mode!r}, index_root={str(self.index_root)!r})"

    # --- settings ----------------------------------------------------------

    @property
    def model(self) -> str:
        """The model this indexer uses (see the ``model`` parameter)."""
        if self._model_arg is not None:
            return _normalise_model(self._model_arg)
        if self.store.exists():
            return self.store.current().manifest.model
        return _normalise_model(os.environ.get("COLBERT_MODAL_MODEL") or DEFAULT_MODEL)

    @property
    def max_tokens(self) -> int:
        """Chunk size in tokens: as given, else the existing index's, else 256."""
        return self._chunk_settings(self._manifest_or_none())[0]

    @property
    def overlap(self) -> int:
        return self._chunk_settings(self._manifest_or_none())[1]

    def _manifest_or_none(self) -> Manifest | None:
        return self.store.current().manifest if self.store.exists() else None

    def _chunk_settings(self, manifest: Manifest | None) -> tuple[int, int]:
        max_tokens = self._max_tokens_arg
        overlap = self._overlap_arg
        if max_tokens is None and overlap is None and manifest is not None:
            return manifest.max_tokens, manifest.overlap
        if max_tokens is None:
            max_tokens = manifest.max_tokens if manifest is not None else DEFAULT_MAX_TOKENS
        if overlap is None:
            overlap = round(max_tokens * 0.15)
        if not 0 <= overlap < max_tokens:
            raise ConfigurationError(f"overlap must be in [0, max_tokens), got {overlap}")
        return max_tokens, overlap

    def _settings(self, manifest: Manifest | None, rebuild: bool) -> Settings:
        max_tokens, overlap = self._chunk_settings(None if rebuild else manifest)
        model = self._model_arg
        if model is None and manifest is not None and not rebuild:
            return Settings(manifest.model, max_tokens, overlap)
        model = _normalise_model(model or os.environ.get("COLBERT_MODAL_MODEL") or DEFAULT_MODEL)
        return Settings(model, max_tokens, overlap)

    def _chunker(self, settings: Settings) -> Callable[[], Chunker]:
        return lambda: Chunker(load_tokenizer(settings.model), max_tokens=settings.max_tokens, overlap=settings.overlap)

    def _show_progress(self) -> bool:
        if self.progress is not None:
            return self.progress
        import sys

        return sys.stderr.isatty()

    def _file_progress(self) -> Callable[[Iterable[Any], int], Iterable[Any]] | None:
        if not self._show_progress():
            return None
        from tqdm.auto import tqdm

        def wrap(items: Iterable[Any], total: int) -> Iterable[Any]:
            bar = tqdm(total=total, desc="loading", unit="file", leave=False)
            for item in items:
                if not hasattr(item, "message"):
                    bar.update(1)
                yield item
            bar.close()

        return wrap

    # --- local -------------------------------------------------------------

    @dispatchable
    def index(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        passwords: Passwords = None,
        rebuild: bool = False,
        keep_missing: bool = False,
    ) -> IndexReport:
        """Index files and folders (recursively); returns what was done.

        Re-running on the same paths indexes only new and changed files and
        drops the chunks of files that no longer exist (``keep_missing=True``
        keeps them). Files that cannot be read are listed in
        ``report.skipped`` with the reason; the rest is indexed.
        ``passwords``: one password for every encrypted PDF, or a mapping of
        file path (or file name) to password.
        """
        paths = _as_path_list(paths)
        with self.store.lock(self.lock_timeout):
            plan = self._plan(paths, self._manifest_or_none(), passwords=passwords, rebuild=rebuild, keep_missing=keep_missing)
            return self._apply_local(plan)

    def _plan(
        self, paths: list[str], manifest: Manifest | None, *, passwords: Passwords, rebuild: bool, keep_missing: bool
    ) -> UpdatePlan:
        """Load and chunk what changed against ``manifest`` (runs on this machine in both modes)."""
        settings = self._settings(manifest, rebuild)
        return plan_update(
            paths,
            name=self.name,
            settings=settings,
            manifest=manifest,
            chunker=self._chunker(settings),
            passwords=passwords,
            rebuild=rebuild,
            keep_missing=keep_missing,
            progress=self._file_progress(),
        )

    def _apply_local(self, plan: UpdatePlan) -> IndexReport:
        from .engine import get_engine

        bar = None
        if self._show_progress() and plan.new_chunks:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan.new_chunks), desc="encoding", unit="chunk", leave=False)
        try:
            report = apply_update(
                self.store,
                plan,
                engine_factory=lambda m: get_engine(m, verbose=self.verbose, precision=self.precision),
                backend=self.backend,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        self._searcher = None
        return report

    @index.remote_impl
    def _index_remote(self, paths: Any, **kwargs: Any) -> IndexReport:
        from . import remote

        return remote.index(self, _as_path_list(paths), **kwargs)

    @dispatchable
    def delete(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> IndexReport:
        """Remove the chunks of these files (or of everything under these folders)."""
        paths = _as_path_list(paths)
        with self.store.lock(self.lock_timeout):
            gen = self.store.current()
            plan = plan_deletion(paths, manifest=gen.manifest, settings=self._settings(gen.manifest, False))
            return self._apply_local(plan)

    @delete.remote_impl
    def _delete_remote(self, paths: Any) -> IndexReport:
        from . import remote

        return remote.delete(self, _as_path_list(paths))

    @dispatchable
    def search(self, query: str, *, k: int = 10) -> list[SearchResult]:
        """The ``k`` best passages for ``query``, best first (always a list)."""
        if not isinstance(query, str):
            raise ConfigurationError("search() takes one query string; use search_batch() for several")
        return self.search_batch.local([query], k=k)[0]

    @search.remote_impl
    def _search_remote(self, query: str, *, k: int = 10) -> list[SearchResult]:
        if not isinstance(query, str):
            raise ConfigurationError("search() takes one query string; use search_batch() for several")
        from . import remote

        return remote.search_batch(self, [query], k=k)[0]

    @dispatchable
    def search_batch(self, queries: Sequence[str], *, k: int = 10) -> list[list[SearchResult]]:
        """One result list per query, in order (always a list of lists)."""
        queries = _check_queries(queries, k)
        if not queries:
            return []
        searcher, chunks = self._open()
        hits = searcher.search(queries, k)
        return [SearchResults(_to_results(h, chunks)) for h in hits]

    @search_batch.remote_impl
    def _search_batch_remote(self, queries: Sequence[str], *, k: int = 10) -> list[list[SearchResult]]:
        from . import remote

        return remote.search_batch(self, _check_queries(queries, k), k=k)

    @dispatchable
    def info(self) -> IndexInfo:
        """What the index holds and how it was built."""
        return info_from_generation(self.store.current())

    @info.remote_impl
    def _info_remote(self) -> IndexInfo:
        from . import remote

        return remote.info(self)

    def drop(self) -> None:
        """Delete this index from local disk entirely."""
        self.store.destroy()
        self._searcher = None

    def pull(self, *, overwrite: bool = True) -> Path:
        """Copy the index from the Modal Volume to ``index_root`` (then search it locally)."""
        from . import remote

        return remote.pull(self, overwrite=overwrite)

    def push(self) -> None:
        """Copy the local index to the Modal Volume (then search it remotely)."""
        from . import remote

        remote.push(self)

    def close(self) -> None:
        """Release the loaded index and any open Modal session."""
        self._searcher = None
        if self._remote_session is not None:
            session, self._remote_session = self._remote_session, None
            session.close()

    def __enter__(self) -> ColbertIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------

    def _open(self) -> tuple[Any, list[Any]]:
        """The searcher of the current generation, reopened if a newer one was published."""
        with self._search_lock:
            current = self.store.current_generation_name()
            if current is None:
                self.store.current()  # raises IndexNotFoundError with the message
            if self._searcher is None or self._searcher[0] != current:
                gen = self.store.current()
                self._searcher = (current, *open_generation(gen, verbose=self.verbose, precision=self.precision))  # type: ignore[assignment]
            _, searcher, chunks = self._searcher  # type: ignore[misc]
            return searcher, chunks


def open_generation(
    gen: Generation, *, verbose: bool = False, precision: str | None = None
) -> tuple[Any, list[Any]]:
    from .engine import get_engine

    chunks = gen.chunks()
    engine = get_engine(gen.manifest.model, verbose=verbose, precision=precision)
    searcher = engine.open(gen.engine_dir, gen.manifest.backend, [c.text for c in chunks])
    return searcher, chunks


def info_from_generation(gen: Generation) -> IndexInfo:
    m = gen.manifest
    return IndexInfo(
        name=m.name,
        path=str(gen.path.parent.parent),
        model=m.model,
        max_tokens=m.max_tokens,
        overlap=m.overlap,
        backend=m.backend,
        documents=len(m.files),
        chunks=m.n_chunks,
        generation=m.generation,
        created_at=m.created_at,
        updated_at=m.updated_at,
        sources=sorted(m.files),
    )


def _to_results(hits: list[tuple[int, float]], chunks: list[Any]) -> list[SearchResult]:
    out = []
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


def _check_queries(queries: Sequence[str], k: int) -> list[str]:
    if isinstance(queries, str):
        raise ConfigurationError("search_batch() takes a list of query strings; use search() for one")
    queries = list(queries)
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ConfigurationError(f"every query must be a non-empty string, got {q!r}")
    if not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, got {k!r}")
    return queries


def _as_path_list(paths: Any) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    try:
        return [os.fspath(p) for p in paths]
    except TypeError as exc:
        raise ConfigurationError(f"paths must be a path or a list of paths, got {paths!r}") from exc


def _normalise_model(model: str) -> str:
    """Local checkpoint directories are recorded as absolute paths; hub ids as given."""
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p.absolute())
    return model
