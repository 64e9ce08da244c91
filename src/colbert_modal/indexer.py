"""``ColbertIndexer``: load -> chunk -> dispatch to the local or remote engine."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .chunking import DEFAULT_MAX_TOKENS, Chunker, check_max_tokens, default_overlap, load_tokenizer
from .dispatch import Mode, await_, bridged, dispatchable, mode_of
from .engine import BACKENDS, check_precision
from .errors import ConfigurationError
from .filters import parse_where
from .hub import DEFAULT_MODEL
from .keyword import check_mode
from .loaders import Passwords
from .ocr import OcrSettings, settings_for
from .pipeline import (
    MAX_CHUNKS_PER_FILE,
    MetadataSpec,
    Settings,
    UpdatePlan,
    plan_deletion,
    plan_update,
    shard_count,
)
from .progress import Progress
from .records import IndexInfo, IndexReport, RerankResult, SearchResult
from .reranking import check_items, check_k, check_query
from .runners import Runner
from .runners.local import LocalRunner
from .search import check_queries
from .sharding import check_shards, default_shards
from .store import IndexStore, Manifest, default_index_root, validate_index_name
from .texts import check_ids, check_records, plan_text_deletion, plan_texts, public_report

if TYPE_CHECKING:  # pragma: no cover
    from .runners.remote import RemoteRunner

__all__ = ["DEFAULT_MODEL", "ColbertIndexer", "Mode", "SearchMode"]
#: How :meth:`ColbertIndexer.search` ranks: ColBERT alone, BM25 alone, or both fused.
SearchMode = Literal["colbert", "hybrid", "keyword"]

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
        elsewhere. ``"fp32"`` or ``"bf16"`` force one. ``"int8"``: the query encoder dynamically quantized (CPU only).
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
        precision: Literal["auto", "fp32", "bf16", "int8"] | None = None,
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
        if max_tokens is not None:
            check_max_tokens(max_tokens)
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
        self._local = LocalRunner(
            self.store, backend=backend, lock_timeout=lock_timeout, verbose=verbose, precision=self.precision
        )
        self._remote: RemoteRunner | None = None

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

    # --- operations: each written once; the runner does the work where it runs -------------

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
        ocr: Literal["auto", "off", "force"] = "auto",
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
        ``ocr``: PDF pages without a text layer (scans) are OCR'd with
        ``"auto"`` (the default; needs the ``ocr`` extra locally, else such
        pages are reported as now), every page with ``"force"``, none with
        ``"off"``; ``report.ocr_pages`` lists them (see :mod:`colbert_modal.ocr`).

        In remote mode the files are read and chunked here and the plan is
        applied on Modal; scanned pages are OCR'd on Modal (a CPU function
        mapped over the pages), not here.
        """
        path_list = _as_path_list(paths)
        runner = self._runner()
        ocr_settings = settings_for(ocr, remote=hasattr(runner, "ocr_pages"))
        if self._model_arg is not None:  # fail before any work (remote: before any container)
            runner.check_model(self._settings(None, True).model)
        progress = self._progress()

        def plan(manifest: Manifest | None) -> UpdatePlan:
            runner.check_model(self._settings(manifest, rebuild).model)
            return self._plan(
                path_list, manifest, passwords=passwords, rebuild=rebuild, keep_missing=keep_missing,
                progress=progress, metadata=metadata,
                follow_symlinks=follow_symlinks, max_chunks_per_file=max_chunks_per_file,
                ocr=ocr_settings, ocr_remote=getattr(runner, "ocr_pages", None),
            )

        return public_report(runner.update(plan, rebuild=rebuild, must_exist=False, progress=progress))

    @dispatchable
    def delete(self, paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> IndexReport:
        """Remove the chunks of these files (or of everything under these folders)."""
        path_list = _as_path_list(paths)

        def plan(manifest: Manifest | None) -> UpdatePlan:
            assert manifest is not None  # must_exist
            return plan_deletion(path_list, manifest=manifest)

        return public_report(self._runner().update(plan, rebuild=False, must_exist=True, progress=self._progress()))

    @dispatchable
    def index_texts(
        self, records: Iterable[Any], *, max_chunks_per_file: int = MAX_CHUNKS_PER_FILE
    ) -> IndexReport:
        """Index texts from memory, each a "file" of the index; returns what was done.

        ``records``: plain strings, or records with an ``id``, ``text`` and
        optional ``metadata``: :class:`~colbert_modal.TextRecord` s, dicts
        ``{"id", "text", "metadata"}``, or objects with ``.id`` and ``.text``.
        A plain string's id is the first 16 hex digits of the SHA-256 of its
        UTF-8 text (:meth:`TextRecord.from_text <colbert_modal.TextRecord.from_text>`).
        Each record is chunked as a file is and incremental by id: the same
        text is not re-encoded, a changed text is, new metadata alone encodes
        nothing (``report.metadata_updated``); records not given are kept
        (:meth:`delete_texts` removes them). Metadata is searchable with
        ``where=``. Hits of a record carry its id as ``source``, no pages; reports
        name it by its id. Records and files share an index (ids never collide
        with files). A bad record (no or empty id, duplicate ids, non-string
        or empty text, metadata not a dict of JSON scalars) raises
        :class:`~colbert_modal.ConfigurationError` naming it, before any work.
        """
        checked = check_records(records)
        if isinstance(max_chunks_per_file, bool) or not isinstance(max_chunks_per_file, int) or max_chunks_per_file < 1:
            raise ConfigurationError(f"max_chunks_per_file must be a positive integer, got {max_chunks_per_file!r}")
        runner = self._runner()
        if self._model_arg is not None:
            runner.check_model(self._settings(None, True).model)

        def plan(manifest: Manifest | None) -> UpdatePlan:
            settings = self._settings(manifest, False)
            runner.check_model(settings.model)
            made = plan_texts(checked, name=self.name, settings=settings, manifest=manifest,
                              chunker=self._chunker(settings), max_chunks=max_chunks_per_file)
            if manifest is None and settings.shard_count is None:
                made.settings = dataclasses.replace(settings, shard_count=default_shards(len(made.new_chunks)))
            return made

        return public_report(runner.update(plan, rebuild=False, must_exist=False, progress=self._progress()))

    @dispatchable
    def delete_texts(self, ids: str | Iterable[str]) -> IndexReport:
        """Remove the text records with these ids (:meth:`index_texts`); an unknown id is in ``report.skipped``."""
        id_list = check_ids(ids)

        def plan(manifest: Manifest | None) -> UpdatePlan:
            assert manifest is not None  # must_exist
            return plan_text_deletion(id_list, manifest=manifest)

        return public_report(self._runner().update(plan, rebuild=False, must_exist=True, progress=self._progress()))

    @dispatchable
    def search(
        self, query: str, *, k: int = 10, where: Mapping[str, Any] | None = None, mode: SearchMode = "colbert",
        keyword_weight: float = 1.0,
    ) -> list[SearchResult]:
        """The ``k`` best passages for ``query``, best first (always a list).

        ``where``: search only the chunks that match these conditions (see
        :mod:`colbert_modal.filters`), e.g. ``{"year": 2023, "page": {"$gte": 10}}``;
        the best ``min(k, matching chunks)`` of them are returned.
        ``mode``: ``"colbert"`` (default: ColBERT's MaxSim), ``"keyword"`` (BM25 over the
        index's keyword file, :mod:`colbert_modal.keyword`) or ``"hybrid"``: both rankings
        (100 deep, or ``k``) fused by reciprocal rank, ``1/(60 + rank)`` for ColBERT plus
        ``keyword_weight/(60 + rank)`` for BM25; a hit's ``score`` is then that sum.
        Exact identifiers (docket, part and section numbers) are where keyword and hybrid help.
        """
        return self.search_batch(_one_query(query), k=k, where=where, mode=mode, keyword_weight=keyword_weight)[0]

    @dispatchable
    def search_batch(
        self, queries: Sequence[str], *, k: int = 10, where: Mapping[str, Any] | None = None,
        mode: SearchMode = "colbert", keyword_weight: float = 1.0,
    ) -> list[list[SearchResult]]:
        """One result list per query, in order (always a list of lists); ``where``, ``mode`` as in :meth:`search`."""
        queries = check_queries(queries, k)
        parse_where(where)  # a bad filter fails before the index is opened or any remote call
        check_mode(mode, keyword_weight)
        if not queries:
            return []
        how: dict[str, Any] = {"mode": mode, "keyword_weight": float(keyword_weight)} if mode != "colbert" else {}
        return list(self._runner().search_batch(queries, k, dict(where) if where else None, **how))

    @dispatchable
    def rerank(self, query: str, texts: Iterable[Any], *, k: int | None = None) -> list[RerankResult]:
        """Score ``texts`` for ``query`` with this index's model, best first; the index is not searched.

        ``texts``: strings, or records (a mapping with ``text`` and optional
        ``id`` and ``metadata``, or an object with ``.text``, such as a
        :class:`SearchResult`); ``k``: keep the best ``k`` (default: all).
        Scored as the index scores its chunks (texts cut at its ``max_tokens``):
        a text that is one of its chunks gets its search score. Equal scores
        come by ``id``, then position in ``texts``. Remote mode scores in the
        index's Searcher container. See :func:`colbert_modal.rerank` for a model without an index.
        """
        query, items, k = check_query(query), check_items(texts), check_k(k)
        model = _normalise_model(self._model_arg) if self._model_arg is not None else None
        return self._runner().rerank(query, items, k, model=model, max_tokens=self._max_tokens_arg)

    @dispatchable
    def info(self) -> IndexInfo:
        """What the index holds and how it was built."""
        return self._runner().info()

    def drop(self) -> None:
        """Delete this index from local disk entirely."""
        self._local.drop()

    def pull(self, *, overwrite: bool = True) -> Path:
        """Copy the index from the Modal Volume to ``index_root`` (then search it locally)."""
        from .remote.volumes import pull

        path = pull(self._remote_runner().session, self.store, overwrite=overwrite, lock_timeout=self.lock_timeout)
        self._local.forget()
        return path

    def push(self) -> None:
        """Copy the local index to the Modal Volume (then search it remotely)."""
        from .remote.volumes import push

        push(self._remote_runner().session, self.store.current())

    def close(self) -> None:
        """Release the loaded index and any open Modal session."""
        self._local.close()
        remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()

    def __enter__(self) -> ColbertIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------

    def _runner(self) -> Runner:
        """Who does the work of the method being called: as forced by ``.local``/``.remote``, else ``mode``."""
        return self._remote_runner() if mode_of(self) == "remote" else self._local

    def _remote_runner(self) -> RemoteRunner:
        """This indexer's Modal session, opened (credentials checked first) on first use."""
        from .remote.client import RemoteSession, session_kind
        from .runners.remote import RemoteRunner

        runner = self._remote
        if runner is None or runner.closed:
            kind = session_kind(self.remote_app)

            def open_session() -> RemoteSession:
                return RemoteSession(kind, gpu=self.gpu, timeout=self.remote_timeout, verbose=self.verbose,
                                     progress=self.progress)

            # an .aio call's body runs on the event loop: open the session (it probes Modal) in a worker thread
            session = await_(asyncio.to_thread(open_session)) if bridged() else open_session()
            runner = self._remote = RemoteRunner(
                session, self.name, backend=self.backend, lock_timeout=self.lock_timeout
            )
        return runner

    def _plan(
        self, paths: list[str], manifest: Manifest | None, *, passwords: Passwords, rebuild: bool, keep_missing: bool,
        progress: Progress,
        metadata: MetadataSpec = None,
        follow_symlinks: bool = False, max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
        ocr: OcrSettings | None = None, ocr_remote: Any = None,
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
            ocr=ocr,
            ocr_remote=ocr_remote,
        )
        if settings.shard_count is None and (manifest is None or rebuild):
            # decided here, the same wherever the plan is applied: a rebuild keeps the index's count,
            # a new index gets one shard per MAX_CHUNKS_PER_SHARD chunks
            count = shard_count(manifest) if manifest is not None else default_shards(len(plan.new_chunks))
            plan.settings = dataclasses.replace(settings, shard_count=count)
        return plan


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
