"""``ColbertIndexer``: load -> chunk -> dispatch to the local or remote engine."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .chunking import DEFAULT_MAX_TOKENS, Chunker, default_overlap, load_tokenizer
from .engine import BACKENDS, check_precision
from .errors import ConfigurationError, IndexNotFoundError, IndexStorageError
from .filters import parse_where
from .hub import DEFAULT_MODEL
from .loaders import Passwords
from .models import IndexInfo, IndexReport, SearchResult
from .pipeline import (
    MAX_CHUNKS_PER_FILE,
    MetadataSpec,
    Settings,
    UpdatePlan,
    nothing_to_index,
    plan_deletion,
    plan_update,
)
from .progress import Progress
from .search import LiveIndex, OpenIndex, check_queries
from .sharding import apply as apply_sharded
from .sharding import check_shards, default_shards, open_generation
from .store import IndexStore, Manifest, default_index_root, load_generation, validate_index_name

if TYPE_CHECKING:  # pragma: no cover
    from .remote.client import RemoteSession

__all__ = ["DEFAULT_MODEL", "ColbertIndexer", "Mode"]
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
        Show progress bars. Default: in a terminal (stderr is a TTY) and in
        Jupyter, never when output is piped or ``$CI`` is set.
    gpu:
        Remote mode: the Modal GPU type for this indexer, as ``$COLBERT_MODAL_GPU``
        takes it (default: the app's, L4 falling back to A10, T4). One type
        (``"A100"``) is applied with ``with_options``; a fallback list
        (``"L4,A10"``) or ``"cpu"`` only where the app already uses it
        (else :class:`~colbert_modal.ConfigurationError`: set
        ``$COLBERT_MODAL_GPU`` for the app instead).
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
    remote_timeout:
        Remote mode: seconds an index build may run on Modal before it is
        stopped (default 2 hours, or ``$COLBERT_MODAL_TIMEOUT`` at deploy
        time); past it, :class:`~colbert_modal.RemoteTimeoutError`.
    shards:
        Split a new index (or one rebuilt with ``rebuild=True``) into this
        many shards, by document: built in parallel in remote mode (one
        container each), searched shard by shard and merged (see
        :mod:`colbert_modal.sharding`). Default: the index's own count, else
        one shard per :data:`~colbert_modal.sharding.MAX_CHUNKS_PER_SHARD`
        (50,000) chunks of the first ``index`` call.
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
        remote_timeout: float | None = None,
        shards: int | None = None,
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
        self.remote_timeout = remote_timeout
        self.shards = check_shards(shards)
        self._live = LiveIndex(self.store, self._open_generation)
        self._remote_session: RemoteSession | None = None

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

    def _manifest_for_update(self, rebuild: bool) -> Manifest | None:
        """The manifest an update builds on; a rebuild ignores a damaged one."""
        try:
            return self._manifest_or_none()
        except IndexStorageError:
            if rebuild:
                return None
            raise

    def _chunk_settings(self, manifest: Manifest | None) -> tuple[int, int]:
        max_tokens = self._max_tokens_arg
        overlap = self._overlap_arg
        if max_tokens is None and overlap is None and manifest is not None:
            return manifest.max_tokens, manifest.overlap
        if max_tokens is None:
            max_tokens = manifest.max_tokens if manifest is not None else DEFAULT_MAX_TOKENS
        if overlap is None:
            overlap = default_overlap(max_tokens)
        if not 0 <= overlap < max_tokens:
            raise ConfigurationError(f"overlap must be in [0, max_tokens), got {overlap}")
        return max_tokens, overlap

    def _settings(self, manifest: Manifest | None, rebuild: bool) -> Settings:
        max_tokens, overlap = self._chunk_settings(None if rebuild else manifest)
        model = self._model_arg
        if model is None and manifest is not None and not rebuild:
            return Settings(manifest.model, max_tokens, overlap, self.shards)
        model = _normalise_model(model or os.environ.get("COLBERT_MODAL_MODEL") or DEFAULT_MODEL)
        return Settings(model, max_tokens, overlap, self.shards)

    def _chunker(self, settings: Settings) -> Callable[[], Chunker]:
        return lambda: Chunker(load_tokenizer(settings.model), max_tokens=settings.max_tokens, overlap=settings.overlap)

    def _progress(self) -> Progress:
        """This call's stages, shown as bars where a person watches (see :mod:`colbert_modal.progress`)."""
        return Progress(self.progress)

    # --- operations ----------------------------------------------------------

    @dispatchable
    def index(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        passwords: Passwords = None,
        rebuild: bool = False,
        keep_missing: bool = False,
        metadata: MetadataSpec = None,
        follow_symlinks: bool = False,
        max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
    ) -> IndexReport:
        """Index files and folders (recursively); returns what was done.

        Re-running on the same paths indexes only new and changed files and
        drops the chunks of files that no longer exist (``keep_missing=True``
        keeps them). Files that cannot be read are listed in
        ``report.skipped`` with the reason; the rest is indexed.
        ``passwords``: one password for every encrypted PDF, or a mapping of
        file path (or file name) to password.
        ``metadata``: a mapping from a path, file name or glob to a dict of
        JSON scalars (or lists of them), or a callable ``(Path) -> dict``;
        stored per file and copied into every chunk's and result's
        ``metadata``, and searchable with ``where=``. Files it says nothing
        of keep their metadata; changing only metadata encodes nothing.
        ``rebuild=True`` re-indexes everything, and repairs a damaged index.
        ``follow_symlinks``: symlinks inside the folders given that lead
        outside them (and symlinked folders) are skipped and reported unless
        True. ``max_chunks_per_file``: a file that would make more chunks is
        skipped and reported (default 5000), never truncated.
        """
        paths = _as_path_list(paths)
        progress = self._progress()
        with self.store.lock(self.lock_timeout):
            manifest = self._manifest_for_update(rebuild)
            plan = self._plan(
                paths, manifest, passwords=passwords, rebuild=rebuild, keep_missing=keep_missing,
                progress=progress, metadata=metadata,
                follow_symlinks=follow_symlinks, max_chunks_per_file=max_chunks_per_file,
            )
            return self._apply_local(plan, progress)

    @index.remote_impl
    def _index_remote(
        self, paths: Any, *, passwords: Passwords = None, rebuild: bool = False, keep_missing: bool = False,
        metadata: MetadataSpec = None,
        follow_symlinks: bool = False, max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
    ) -> IndexReport:
        """Plan the update here (load + chunk against the remote manifest), apply it on Modal."""
        from .remote.client import check_remote_model

        session = self._session()
        if self._model_arg is not None:  # fail before any remote call
            check_remote_model(self._settings(None, True).model, session)
        manifest = session.manifest(self.name)
        check_remote_model(self._settings(manifest, rebuild).model, session)
        progress = self._progress()
        plan = self._plan(
            _as_path_list(paths), manifest, passwords=passwords, rebuild=rebuild, keep_missing=keep_missing,
            progress=progress, metadata=metadata,
            follow_symlinks=follow_symlinks, max_chunks_per_file=max_chunks_per_file,
        )
        if manifest is None and not plan.new_chunks:
            raise nothing_to_index(plan)  # with the report; no GPU container started
        return session.apply(plan, backend=self.backend, lock_timeout=self.lock_timeout, progress=progress)

    @dispatchable
    def delete(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> IndexReport:
        """Remove the chunks of these files (or of everything under these folders)."""
        paths = _as_path_list(paths)
        with self.store.lock(self.lock_timeout):
            gen = self.store.current()
            plan = plan_deletion(paths, manifest=gen.manifest)
            return self._apply_local(plan, self._progress())

    @delete.remote_impl
    def _delete_remote(self, paths: Any) -> IndexReport:
        from .remote import VOLUME_NAME

        session = self._session()
        manifest = session.manifest(self.name)
        if manifest is None:
            raise IndexNotFoundError(f"no index named {self.name!r} on the Modal Volume {VOLUME_NAME!r}")
        plan = plan_deletion(_as_path_list(paths), manifest=manifest)
        return session.apply(plan, backend=self.backend, lock_timeout=self.lock_timeout, progress=self._progress())

    @dispatchable
    def search(self, query: str, *, k: int = 10, where: Mapping[str, Any] | None = None) -> list[SearchResult]:
        """The ``k`` best passages for ``query``, best first (always a list).

        ``where``: search only the chunks that match these conditions (see
        :mod:`colbert_modal.filters`), e.g. ``{"year": 2023, "page": {"$gte": 10}}``;
        the best ``min(k, matching chunks)`` of them are returned.
        """
        return self.search_batch.local(_one_query(query), k=k, where=where)[0]

    @search.remote_impl
    def _search_remote(self, query: str, *, k: int = 10, where: Mapping[str, Any] | None = None) -> list[SearchResult]:
        return self.search_batch.remote(_one_query(query), k=k, where=where)[0]

    @dispatchable
    def search_batch(
        self, queries: Sequence[str], *, k: int = 10, where: Mapping[str, Any] | None = None
    ) -> list[list[SearchResult]]:
        """One result list per query, in order (always a list of lists); ``where`` as in :meth:`search`."""
        queries = check_queries(queries, k)
        parse_where(where)  # a bad filter fails before the index is opened
        if not queries:
            return []
        return list(self._live.current().search_batch(queries, k, where))

    @search_batch.remote_impl
    def _search_batch_remote(
        self, queries: Sequence[str], *, k: int = 10, where: Mapping[str, Any] | None = None
    ) -> list[list[SearchResult]]:
        queries = check_queries(queries, k)
        parse_where(where)  # a bad filter fails before any remote call
        if not queries:
            return []
        return list(self._session().search_batch(self.name, queries, k, where=dict(where) if where else None))

    @dispatchable
    def info(self) -> IndexInfo:
        """What the index holds and how it was built."""
        return self.store.current().info()

    @info.remote_impl
    def _info_remote(self) -> IndexInfo:
        return self._session().info(self.name)

    def drop(self) -> None:
        """Delete this index from local disk entirely."""
        self.store.destroy()
        self._live.forget()

    def pull(self, *, overwrite: bool = True) -> Path:
        """Copy the index from the Modal Volume to ``index_root`` (then search it locally)."""
        from .remote.client import pull

        path = pull(self._session(), self.store, overwrite=overwrite, lock_timeout=self.lock_timeout)
        self._live.forget()
        return path

    def push(self) -> None:
        """Copy the local index to the Modal Volume (then search it remotely)."""
        from .remote.client import push

        push(self._session(), self.store.current())

    def close(self) -> None:
        """Release the loaded index and any open Modal session."""
        self._live.forget()
        session, self._remote_session = self._remote_session, None
        if session is not None:
            session.close()

    def __enter__(self) -> ColbertIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------

    def _plan(
        self, paths: list[str], manifest: Manifest | None, *, passwords: Passwords, rebuild: bool, keep_missing: bool,
        progress: Progress,
        metadata: MetadataSpec = None,
        follow_symlinks: bool = False, max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
    ) -> UpdatePlan:
        """Load and chunk what changed against ``manifest`` (runs on this machine in both modes)."""
        settings = self._settings(manifest, rebuild)
        plan = plan_update(
            paths,
            name=self.name,
            settings=settings,
            manifest=manifest,
            chunker=self._chunker(settings),
            passwords=passwords,
            rebuild=rebuild,
            keep_missing=keep_missing,
            progress=progress,
            metadata=metadata,
            follow_symlinks=follow_symlinks,
            max_chunks_per_file=max_chunks_per_file,
        )
        if settings.shards is None and (manifest is None or rebuild):
            # a new index's shard count, from its size, decided here: the same wherever the plan is applied
            plan.settings = dataclasses.replace(settings, shards=default_shards(len(plan.new_chunks)))
        return plan

    def _apply_local(self, plan: UpdatePlan, progress: Progress) -> IndexReport:
        from .engine import get_engine

        try:
            report = apply_sharded(
                self.store,
                plan,
                engine_factory=lambda m: get_engine(m, verbose=self.verbose, precision=self.precision),
                backend=self.backend,
                progress=progress,
            )
        finally:
            progress.close()
        self._live.forget()
        return report

    def _open_generation(self, gen_name: str) -> OpenIndex:
        gen = load_generation(self.store.generation_path(gen_name))
        return open_generation(gen, verbose=self.verbose, precision=self.precision)

    def _session(self) -> RemoteSession:
        """This indexer's Modal session, opened (credentials checked first) on first use."""
        from .remote.client import RemoteSession, session_kind

        session = self._remote_session
        if session is None or session.closed:
            session = RemoteSession(
                session_kind(self.remote_app), gpu=self.gpu, timeout=self.remote_timeout, verbose=self.verbose,
                progress=self.progress,
            )
            self._remote_session = session
        return session


def _one_query(query: str) -> list[str]:
    if not isinstance(query, str):
        raise ConfigurationError("search() takes one query string; use search_batch() for several")
    return [query]


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
