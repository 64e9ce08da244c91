"""The second half of an index update: apply a plan where the index lives.

:func:`apply_update` runs in this process or in a GPU container with the
index on a Volume: it checks the plan against the published generation,
encodes the new chunks, reuses what it can, and builds and seals the next
generation aside. Its caller publishes it (``store.make_current``), or names
it in a sharded index's top generation (:mod:`colbert_modal.sharding`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ColbertModalError, IndexLockedError, IndexStorageError
from .pipeline import UpdatePlan, check_settings, nothing_to_index, with_metadata
from .progress import Progress
from .records import Chunk, IndexReport
from .store import FileEntry, Generation, IndexStore, Manifest, now_iso, storage_error

__all__ = ["Applied", "apply_update", "check_plan", "previous_generation"]


class Applied(NamedTuple):
    """What :func:`apply_update` did: the report, and the generation it sealed (None: nothing to write)."""

    report: IndexReport
    sealed: Generation | None = None


def apply_update(
    store: IndexStore,
    plan: UpdatePlan,
    *,
    engine_factory: Callable[[str], Any],
    backend: str = "auto",
    progress: Progress | None = None,
) -> Applied:
    """Carry out ``plan`` on the index in ``store``; call under ``store.lock()``.

    Encodes only the chunks that are new (exact backend) and builds the
    next generation aside, sealed but not published: the caller publishes
    it (``store.make_current(applied.sealed)``), or names it in a sharded
    index's top generation. A plan with nothing to do does no engine work
    at all. ``progress`` shows the stages: encoding
    (chunks) or PLAID's (see :meth:`Engine.build_plaid
    <colbert_modal.engine.Engine.build_plaid>`), then publishing.
    """
    from .engine import choose_backend

    progress = progress if progress is not None else Progress(False)

    t0 = time.perf_counter()
    prev = previous_generation(store, rebuild=plan.rebuild)
    check_plan(plan, prev)

    old_files = dict(prev.manifest.files) if prev and not plan.rebuild else {}
    keep_paths = [p for p in plan.unchanged if p in old_files and p not in plan.new_files]
    keep_set = set(keep_paths)
    meta_changes = {
        p: m for p, m in plan.metadata.items() if p in keep_set and old_files[p].metadata != m
    }
    report_base: dict[str, Any] = {
        "index_name": plan.name,
        "indexed": sorted(plan.new_files),
        "unchanged": sorted(p for p in keep_paths if p not in meta_changes),
        "removed": sorted(p for p in plan.remove if p in old_files),
        "metadata_updated": sorted(meta_changes),
        "skipped": plan.skipped,
        "warnings": plan.warnings,
        "ocr_pages": getattr(plan, "ocr_pages", {}),
    }
    if prev is None and not plan.new_chunks:
        raise nothing_to_index(plan)
    if plan.is_noop or (
        not plan.new_files and not report_base["removed"] and not meta_changes and prev is not None
    ):
        total = prev.manifest.n_chunks if prev else 0
        if prev is not None and plan.refreshed:
            try:
                store.refresh_files(prev, plan.refreshed)
            except OSError as exc:
                raise storage_error(exc, f"recording file times in index {plan.name!r}") from exc
        return Applied(IndexReport(
            **report_base,
            chunks_written=0,
            chunks_total=total,
            documents_total=len(prev.manifest.files) if prev else 0,
            timings={**plan.timings, "engine": 0.0},
        ))

    # Chunks of the new generation: kept files' chunks in their old order, then new ones.
    prev_chunks = prev.verified_chunks() if prev and not plan.rebuild else []
    kept_chunks = [
        with_metadata(c, old_files[c.source].metadata, meta_changes[c.source]) if c.source in meta_changes else c
        for c in prev_chunks
        if c.source in keep_set
    ]
    chunks = kept_chunks + list(plan.new_chunks)
    files = {p: _refreshed(old_files[p], plan.refreshed.get(p)) for p in keep_paths}
    files.update({p: replace(files[p], metadata=m) for p, m in meta_changes.items()})
    files.update(plan.new_files)
    if prev is not None and not plan.new_files and not report_base["removed"]:
        return _publish_metadata_only(store, prev, plan, files, chunks, report_base, t0)
    chosen = choose_backend(backend, len(chunks))
    if not chunks:
        chosen = "exact"  # an empty index: PLAID cannot hold one
    manifest = Manifest(
        name=plan.name,
        model=plan.settings.model,
        max_tokens=plan.settings.max_tokens,
        overlap=plan.settings.overlap,
        backend=chosen,
        generation=store.next_generation_number(),
        created_at=prev.manifest.created_at if prev and not plan.rebuild else now_iso(),
        files=files,
        ocr=getattr(plan, "ocr_engine", None) or (prev.manifest.ocr if prev and not plan.rebuild else None),
    )
    try:
        build_dir = store.new_build_dir(manifest.generation)
    except OSError as exc:
        raise storage_error(exc, f"writing generation {manifest.generation} of index {plan.name!r}") from exc
    try:
        written, t1, t2, sealed = _build(store, plan, prev, prev_chunks, kept_chunks, chunks, manifest, build_dir,
                                         engine_factory=engine_factory, progress=progress)
    except OSError as exc:
        if isinstance(exc, ColbertModalError):
            raise
        raise storage_error(exc, f"writing generation {manifest.generation} of index {plan.name!r}") from exc
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)  # frees the space of a failed build at once
    t3 = time.perf_counter()
    return Applied(IndexReport(
        **report_base,
        chunks_written=written,
        chunks_total=len(chunks),
        documents_total=len(files),
        timings={**plan.timings, "prepare": t1 - t0, "encode_and_build": t2 - t1, "publish": t3 - t2},
    ), sealed)


def check_plan(plan: UpdatePlan, prev: Generation | None) -> None:
    """Refuse ``plan`` if the index moved on since it was made (IndexLockedError) or its settings differ."""
    prev_gen = prev.manifest.generation if prev else 0
    if plan.base_generation != prev_gen:
        raise IndexLockedError(
            f"index {plan.name!r} changed while this update was prepared "
            f"(generation {plan.base_generation} -> {prev_gen}); run it again"
        )
    check_settings(prev.manifest if prev else None, plan.settings, rebuild=plan.rebuild)


def previous_generation(store: IndexStore, *, rebuild: bool) -> Generation | None:
    """The published generation (None without one); with ``rebuild``, None where it is damaged too."""
    try:
        return store.current() if store.exists() else None
    except IndexStorageError:
        if rebuild:
            return None
        raise


def _refreshed(entry: FileEntry, stat: tuple[int, float] | None) -> FileEntry:
    if stat is None:
        return entry
    return replace(entry, size=stat[0], mtime=stat[1])


def _build(
    store: IndexStore, plan: UpdatePlan, prev: Generation | None, prev_chunks: list[Chunk], kept_chunks: list[Chunk],
    chunks: list[Chunk], manifest: Manifest, build_dir: Path, *, engine_factory: Callable[[str], Any],
    progress: Progress,
) -> tuple[int, float, float, Generation]:
    """Encode and build the engine index in ``build_dir``, then seal it: (chunks written, start, built, sealed)."""
    chosen = manifest.backend
    engine = engine_factory(plan.settings.model)
    texts = [c.text for c in chunks]
    t1 = time.perf_counter()
    written = len(chunks)
    if chosen == "exact":
        reuse = None
        if prev is not None and prev.manifest.backend == "exact" and not plan.rebuild and kept_chunks:
            from .engine import exact_reuse_from

            old_rows = {c.id: i for i, c in enumerate(prev_chunks)}
            mapping = [old_rows[c.id] for c in kept_chunks] + [-1] * len(plan.new_chunks)
            reuse = exact_reuse_from(prev.engine_dir, mapping)
            written = len(plan.new_chunks)
        with progress.stage("encoding", total=written, unit="chunk") as stage:
            engine.build_exact(
                texts, build_dir / "engine", max_tokens=plan.settings.max_tokens, reuse=reuse, stage=stage
            )
    else:
        engine.build_plaid(
            texts, [c.id for c in chunks], build_dir / "engine", max_tokens=plan.settings.max_tokens, progress=progress
        )
    t2 = time.perf_counter()
    with progress.stage("publishing", unit="generation") as stage:
        sealed = store.seal(build_dir, manifest, chunks)
        stage.update(1)
    return written, t1, t2, sealed


def _publish_metadata_only(
    store: IndexStore, prev: Any, plan: UpdatePlan, files: dict[str, FileEntry], chunks: list[Chunk],
    report_base: dict[str, Any], t0: float,
) -> Applied:
    """Seal ``prev`` with new chunk metadata: the engine files are linked (or copied), nothing is encoded."""
    manifest = replace(prev.manifest, generation=store.next_generation_number(), files=files)
    build_dir = store.new_build_dir(manifest.generation)
    t1 = time.perf_counter()
    shutil.copytree(prev.engine_dir, build_dir / "engine", copy_function=_link_or_copy)
    t2 = time.perf_counter()
    sealed = store.seal(build_dir, manifest, chunks)
    t3 = time.perf_counter()
    return Applied(IndexReport(
        **report_base,
        chunks_written=0,
        chunks_total=len(chunks),
        documents_total=len(files),
        timings={**plan.timings, "prepare": t1 - t0, "encode_and_build": t2 - t1, "publish": t3 - t2},
    ), sealed)


def _link_or_copy(src: str, dst: str) -> None:
    # Generations are immutable (files are replaced, never written in place), so they can share inodes.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

