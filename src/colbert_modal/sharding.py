"""Sharded indexes: one index split by document into shards, built and searched shard by shard.

Layout of a sharded index (``<index_root>/<name>/``)::

    CURRENT                          names the top generation, e.g. "g000007"
    generations/g000007/manifest.json
                                     the top manifest: the settings, every file with its
                                     shard, and ``shards``: shard id -> that shard's
                                     generation, backend and chunk count
    shards/s001/generations/g000003/ an ordinary generation (manifest.json,
                                     chunks.jsonl, engine/) of the files in shard s001

A shard is an index of its own in all but its ``CURRENT``: the top
generation names which of its generations is live, so publishing one top
generation switches every shard at once. An update splits its plan by
shard (:func:`split_plan`) and applies each part with the same
:func:`~colbert_modal.updates.apply_update` as an unsharded index, sealing
a new generation of each shard it touches (:func:`build_shard`); the top
generation is published only when every shard succeeded. A failed shard
leaves the published index as it was (:class:`~colbert_modal.errors.ShardBuildError`);
the next writer removes what the failed update sealed.

**Assignment.** A file stays in its shard for as long as it is in the index
(a changed file is rebuilt in the same shard); a new file goes to the shard
with the fewest chunks, larger files first. So an update touches only the
shards whose files changed, and shards stay balanced by chunks.

**How many.** ``shards=N`` at creation (or with ``rebuild=True``);
without it, ``ceil(chunks / MAX_CHUNKS_PER_SHARD)``, so a small index stays
one shard, stored as an unsharded index. An index keeps its shard count.

**Integrity.** The top manifest carries its own checksum and is checked
when it is read (:func:`~colbert_modal.store.load_generation`, with
:mod:`~colbert_modal.integrity`: every file's shard exists, the chunk counts
add up); before a search or an update, every shard's manifest must agree
with it (:func:`shard_generations`). Anything else is IndexStorageError
naming the file, never a search of what is left or an update that shrinks
the index.

**Search.** Every shard is searched (:class:`OpenShards` in this process;
one Modal container per shard in remote mode) and the hits are merged by
score into the global top k (:func:`merge_results`), equal scores ordered by
source, first page and position in the file
(:func:`~colbert_modal.search.result_key`). MaxSim scores are per chunk, so
with the exact backend the merge gives the unsharded index's list exactly,
ties at the k-th place included.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigurationError, IndexStorageError, ShardBuildError
from .integrity import DISK_FULL
from .keyword import KeywordStats, combine_stats
from .pipeline import UpdatePlan, nothing_to_index
from .progress import Progress
from .records import Chunk, IndexReport, SearchResult, SearchResults
from .search import OpenGeneration, OpenIndex, result_key
from .store import (
    SHARDED_FORMAT,
    FileEntry,
    Generation,
    IndexStore,
    Manifest,
    damaged_error,
    generation_name,
    generation_number,
    load_generation,
    now_iso,
    storage_error,
)
from .updates import apply_update, check_plan, previous_generation

__all__ = [
    "MAX_CHUNKS_PER_SHARD",
    "MAX_SHARDS",
    "OpenShard",
    "OpenShards",
    "ShardJob",
    "ShardResult",
    "ShardStore",
    "adopt_shards",
    "apply",
    "assign",
    "build_shard",
    "check_shards",
    "default_shards",
    "merge_results",
    "open_generation",
    "shard_generation",
    "shard_generations",
    "shard_ids",
    "split_plan",
]

#: Without ``shards=``, an index gets one shard per this many chunks (at
#: creation). 50k chunks of 256 tokens fit an L4 (24 GB GPU) container with
#: room to spare: its PLAID build peaks at ~5 GB of GPU memory and ~15 GB of
#: host memory (BENCHMARKS.md, "Sharded indexes"). ``$COLBERT_MODAL_MAX_CHUNKS_PER_SHARD``.
MAX_CHUNKS_PER_SHARD = int(os.environ.get("COLBERT_MODAL_MAX_CHUNKS_PER_SHARD") or 50_000)
#: The most shards an index may have.
MAX_SHARDS = 1024

#: Builds the shards of one update: called with the jobs, returns one
#: :class:`ShardResult` or exception per job, in any order.
ShardBuilder = Callable[[list["ShardJob"]], Iterable["ShardResult | BaseException"]]


def check_shards(shards: object) -> int | None:
    """``shards`` if it is None or a whole number of shards in [1, MAX_SHARDS]; else ConfigurationError."""
    if shards is None:
        return None
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ConfigurationError(f"shards must be an integer from 1 to {MAX_SHARDS}, got {shards!r}")
    return shards


def shard_ids(n: int) -> list[str]:
    """The ids of ``n`` shards: ``s000``, ``s001``, ..."""
    return [f"s{i:03d}" for i in range(n)]


class ShardStore(IndexStore):
    """One shard of a sharded index: its generations, without a ``CURRENT`` of its own.

    ``live`` is the shard's generation the published top generation names
    (None: a new or empty shard). Updates only seal the shard's generations
    (:func:`~colbert_modal.updates.apply_update`); the top generation
    publishes them. Writes happen under the index's lock (or write lease).
    """

    def __init__(self, index_path: Path, shard: str, live: str | None) -> None:
        super().__init__(index_path / "shards", shard)
        self.live = live

    def exists(self) -> bool:
        return self.live is not None

    def current_generation_name(self) -> str | None:
        return self.live

    def next_generation_number(self) -> int:
        (self.path / "generations").mkdir(parents=True, exist_ok=True)
        return super().next_generation_number()

    def make_current(self, sealed: Generation) -> Generation:
        raise AssertionError("a shard's generations are published by the top generation")  # pragma: no cover

    def refresh_files(self, generation: Generation, stats: dict[str, tuple[int, float]]) -> None:
        """Nothing: file times are recorded in the top manifest."""


@dataclass
class ShardJob:
    """One shard's part of an update: plain data (it pickles to a Modal container)."""

    index_root: str
    index: str
    shard: str
    live: str | None
    plan: UpdatePlan
    backend: str = "auto"


@dataclass
class ShardResult:
    """What :func:`build_shard` did: the new generation (None: nothing changed) and its files."""

    shard: str
    report: IndexReport
    generation: str | None = None
    backend: str | None = None
    chunks: int = 0
    files: dict[str, FileEntry] | None = None
    seconds: float = 0.0


def build_shard(
    job: ShardJob, *, engine_factory: Callable[[str], Any], progress: Progress | None = None
) -> ShardResult:
    """Apply ``job.plan`` to its shard: seal the shard's next generation, publish nothing.

    The body of remote mode's shard containers, and of local mode's loop
    over shards: :func:`~colbert_modal.updates.apply_update` on a
    :class:`ShardStore`.
    """
    t0 = time.perf_counter()
    store = ShardStore(IndexStore(job.index_root, job.index).path, job.shard, job.live)
    report, sealed = apply_update(store, job.plan, engine_factory=engine_factory, backend=job.backend,
                                  progress=progress)
    if sealed is None:
        return ShardResult(job.shard, report, seconds=time.perf_counter() - t0)
    m = sealed.manifest
    return ShardResult(job.shard, report, sealed.path.name, m.backend, m.n_chunks, dict(m.files),
                       time.perf_counter() - t0)


def assign(plan: UpdatePlan, old_files: Mapping[str, FileEntry], ids: Sequence[str]) -> dict[str, str]:
    """The shard of every file the index holds after ``plan``: path -> shard id.

    Files already in the index keep their shard; new ones go to the shard
    with the fewest chunks (larger files first, then by path: deterministic).
    """
    removed = set(plan.remove)
    out = {p: e.shard for p, e in old_files.items() if e.shard is not None and e.shard in ids and p not in removed}
    load = dict.fromkeys(ids, 0)
    for p, sid in out.items():
        load[sid] += len((plan.new_files.get(p) or old_files[p]).chunk_ids)
    new = [p for p in plan.new_files if p not in out]
    for p in sorted(new, key=lambda p: (-len(plan.new_files[p].chunk_ids), p)):
        sid = min(ids, key=lambda s: (load[s], s))
        out[p] = sid
        load[sid] += len(plan.new_files[p].chunk_ids)
    return out


def split_plan(
    plan: UpdatePlan, shards: Mapping[str, Mapping[str, Any]], old_files: Mapping[str, FileEntry],
    assignment: Mapping[str, str],
) -> dict[str, UpdatePlan]:
    """``plan`` cut into one plan per shard it changes (shard id -> plan against that shard's generation).

    ``shards``: the live shards (the top manifest's ``shards``, or a new
    index's ids with no generation).
    """
    by_shard: dict[str, set[str]] = {}  # one pass over the files, not one per shard
    for p, e in old_files.items():
        by_shard.setdefault(e.shard or "", set()).add(p)
    new_by_shard: dict[str, dict[str, FileEntry]] = {}
    for p, e in plan.new_files.items():
        new_by_shard.setdefault(assignment.get(p, ""), {})[p] = e
    chunks_by_source: dict[str, list[Chunk]] = {}
    for c in plan.new_chunks:
        chunks_by_source.setdefault(c.source, []).append(c)
    parts: dict[str, UpdatePlan] = {}
    for sid, live in shards.items():
        new_files = new_by_shard.get(sid, {})
        mine = by_shard.get(sid, set())
        remove = [p for p in plan.remove if p in mine]
        metadata = {p: m for p, m in plan.metadata.items() if p in mine and old_files[p].metadata != m}
        if not (new_files or remove or metadata):
            continue
        gen = live.get("generation")
        parts[sid] = UpdatePlan(
            name=f"{plan.name}/{sid}",
            settings=replace(plan.settings, shard_count=None),
            base_generation=generation_number(gen),
            new_files=new_files,
            new_chunks=[c for p in new_files for c in chunks_by_source.get(p, [])],
            remove=remove,
            unchanged=sorted(p for p in mine if p not in new_files and p not in remove),
            metadata=metadata,
            refreshed={p: st for p, st in plan.refreshed.items() if p in mine},
        )
    return parts


def default_shards(n_chunks: int) -> int:
    """The shards a new index of ``n_chunks`` chunks gets without ``shards=``: one per MAX_CHUNKS_PER_SHARD."""
    return min(MAX_SHARDS, max(1, math.ceil(n_chunks / MAX_CHUNKS_PER_SHARD)))


def _wanted_shards(plan: UpdatePlan, prev: Generation | None) -> int:
    if prev is not None and not plan.rebuild:
        return prev.manifest.shard_count
    asked = plan.settings.shard_count
    return asked if asked is not None else default_shards(len(plan.new_chunks))


def apply(
    store: IndexStore,
    plan: UpdatePlan,
    *,
    engine_factory: Callable[[str], Any],
    backend: str = "auto",
    progress: Progress | None = None,
    build_shards: ShardBuilder | None = None,
    before_shards: Callable[[], None] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> IndexReport:
    """Carry out ``plan`` on the index in ``store``, sharded or not; call under ``store.lock()``.

    An index of one shard is :func:`~colbert_modal.updates.apply_update`'s.
    A sharded one: each shard the plan changes is built by ``build_shards``
    (default: here, one after another; remote mode maps them over Modal
    containers), then one top generation naming every shard's generation is
    published. Any failed shard raises ShardBuildError and publishes nothing.

    Remote mode's Writer sees the Volume as of its last reload and publishes
    by commit, so it deletes nothing under ``shards/`` that it has not seen:
    ``before_shards`` (a Volume commit) publishes what the lock's pruning
    removed before any shard container starts, and ``before_publish`` (a
    Volume reload) shows it the generations the shard containers committed
    before it publishes the top generation and prunes.
    """
    prev = previous_generation(store, rebuild=plan.rebuild)
    sharded_prev = prev is not None and not plan.rebuild and prev.manifest.shards is not None
    n = _wanted_shards(plan, prev)
    if not sharded_prev and n == 1:
        report, sealed = apply_update(store, plan, engine_factory=engine_factory, backend=backend, progress=progress)
        if sealed is not None:
            store.make_current(sealed)
        return report
    progress = progress if progress is not None else Progress(False)
    t0 = time.perf_counter()
    check_plan(plan, prev)
    top = prev if sharded_prev else None
    if top is not None:
        shard_generations(top)  # IndexStorageError unless the shards agree with the top manifest
    old_files = dict(top.manifest.files) if top else {}
    live: dict[str, dict[str, Any]] = (
        {sid: dict(v) for sid, v in (top.manifest.shards or {}).items()} if top else
        {sid: {"generation": None, "backend": None, "chunks": 0} for sid in shard_ids(n)}
    )
    if top is None and not plan.new_chunks:
        raise nothing_to_index(plan)
    assignment = assign(plan, old_files, list(live))
    parts = split_plan(plan, live, old_files, assignment)
    removed = sorted(p for p in plan.remove if p in old_files)
    if not parts:
        if top is not None and plan.refreshed:
            store.refresh_files(top, plan.refreshed)
        return _report(plan, old_files, removed, [], live, t0, {})
    jobs = [ShardJob(str(store.root), store.name, sid, live[sid]["generation"], part, backend)
            for sid, part in parts.items()]
    if before_shards is not None:
        before_shards()
    results = _run(jobs, build_shards, engine_factory, progress)
    if before_publish is not None:
        before_publish()
    files = {p: _with_stat(e, plan.refreshed.get(p)) for p, e in old_files.items() if p not in removed}
    rebuilt = {r.shard: r for r in results if r.files is not None}  # a shard whose update did nothing keeps its files
    files = {p: e for p, e in files.items() if e.shard not in rebuilt}
    for r in rebuilt.values():
        files.update({p: replace(e, shard=r.shard) for p, e in (r.files or {}).items()})
    for r in results:
        if r.generation is not None:
            live[r.shard] = {"generation": r.generation, "backend": r.backend, "chunks": r.chunks}
    t1 = time.perf_counter()
    kinds = sorted({v["backend"] for v in live.values() if v["backend"]})
    manifest = Manifest(
        name=plan.name, model=plan.settings.model, max_tokens=plan.settings.max_tokens,
        overlap=plan.settings.overlap, backend="+".join(kinds) or "exact", generation=store.next_generation_number(),
        created_at=top.manifest.created_at if top else now_iso(), files=files, format=SHARDED_FORMAT, shards=live,
        ocr=getattr(plan, "ocr_engine", None) or (top.manifest.ocr if top and not plan.rebuild else None),
    )
    with progress.stage("publishing", unit="generation") as stage:
        try:
            store.publish(store.new_build_dir(manifest.generation), manifest, None)
        except OSError as exc:  # a full disk: IndexStorageError, as for an unsharded index
            raise exc if isinstance(exc, IndexStorageError) else storage_error(exc, f"publishing {plan.name!r}") from exc
        stage.update(1)
    return _report(plan, files, removed, results, live, t0, {"encode_and_build": t1 - t0,
                                                             "publish": time.perf_counter() - t1})


def _run(jobs: list[ShardJob], build_shards: ShardBuilder | None, engine_factory: Callable[[str], Any],
         progress: Progress) -> list[ShardResult]:
    """Every job's result; ShardBuildError (after removing what the others sealed) if any failed."""
    outcomes: list[ShardResult | BaseException] = []
    with progress.stage("building shards", total=len(jobs), unit="shard") as stage:
        if build_shards is None:
            for job in jobs:
                stage.note(f"shard {job.shard}")
                try:
                    outcomes.append(build_shard(job, engine_factory=engine_factory, progress=progress))
                except Exception as exc:
                    outcomes.append(_tagged(exc, job.shard))
                stage.update(1)
        else:
            for outcome in build_shards(jobs):
                outcomes.append(outcome)
                stage.update(1)
    ok = [o for o in outcomes if isinstance(o, ShardResult)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if len(ok) == len(jobs):
        return ok
    # Which shard each error belongs to: its tag (set where the shard's body ran), else the shards
    # that returned nothing, in order (a container that died cannot tag its error).
    done = {r.shard for r in ok}
    failures = {str(e.shard): e for e in errors if getattr(e, "shard", None) is not None}  # type: ignore[attr-defined]
    untagged = iter([e for e in errors if getattr(e, "shard", None) is None])
    for job in jobs:
        if job.shard not in done and job.shard not in failures:
            failures[job.shard] = next(untagged, None) or RuntimeError("the shard's build returned nothing")
    for r in ok:
        if r.generation is not None:  # sealed, never published: free its space now
            shutil.rmtree(Path(jobs[0].index_root) / jobs[0].index / "shards" / r.shard / "generations" / r.generation,
                          ignore_errors=True)
    storage = [(sid, e) for sid, e in sorted(failures.items()) if isinstance(e, IndexStorageError)
               or (isinstance(e, OSError) and e.errno in DISK_FULL)]
    if storage:  # a full disk or a damaged shard: IndexStorageError, as for an unsharded index
        sid, cause = storage[0]
        error = cause if isinstance(cause, IndexStorageError) else storage_error(cause, "building the shard")
        raise IndexStorageError(f"shard {sid} of index {jobs[0].index!r}: {error}") from cause
    causes = "; ".join(f"shard {sid}: {type(e).__name__}: {e}" for sid, e in sorted(failures.items()))
    raise ShardBuildError(
        f"{len(failures)} of {len(jobs)} shards of index {jobs[0].index!r} failed to build ({causes}); "
        "the published index is unchanged",
        failures=failures,
    )


def _tagged(exc: BaseException, shard: str) -> BaseException:
    """``exc``, marked with the shard it failed in (for the ShardBuildError message)."""
    try:
        exc.shard = shard  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return exc


def _with_stat(entry: FileEntry, stat: tuple[int, float] | None) -> FileEntry:
    return entry if stat is None else replace(entry, size=stat[0], mtime=stat[1])


def _report(plan: UpdatePlan, files: Mapping[str, FileEntry], removed: list[str], results: list[ShardResult],
            live: Mapping[str, Mapping[str, Any]], t0: float, timings: dict[str, float]) -> IndexReport:
    meta = sorted({p for r in results for p in r.report.metadata_updated})
    indexed = sorted(plan.new_files)
    skip = set(indexed) | set(meta) | set(removed)
    return IndexReport(
        index_name=plan.name,
        indexed=indexed,
        unchanged=sorted(p for p in files if p not in skip),
        removed=removed,
        metadata_updated=meta,
        skipped=plan.skipped,
        warnings=plan.warnings,
        ocr_pages=getattr(plan, "ocr_pages", {}),
        chunks_written=sum(r.report.chunks_written for r in results),
        chunks_total=sum(int(v.get("chunks") or 0) for v in live.values()),
        documents_total=len(files),
        timings={**plan.timings, **timings, **{f"shard {r.shard}": r.seconds for r in results},
                 **({} if timings else {"engine": time.perf_counter() - t0})},
    )


def adopt_shards(index: IndexStore, staging: Path, fetch: Callable[[str, str, Path], None]) -> None:
    """Give the shards a staged top generation names their homes in ``index`` (pull, push).

    For each shard generation the staged manifest (``staging/manifest.json``)
    names, ``fetch(shard, generation, dest)`` fills ``dest``, which becomes
    the shard's next generation; the staged manifest is rewritten to name
    them. Call under the index's lock, before :meth:`IndexStore.adopt`
    publishes the top generation; shard generations of a failed adopt are
    never named, and the next writer removes them.
    """
    gen = load_generation(staging)
    shards = gen.manifest.shards
    if shards is None:
        return
    for sid, entry in shards.items():
        if not entry.get("generation"):
            continue
        home = ShardStore(index.path, sid, None)
        number = home.next_generation_number()
        build = home.new_build_dir(number)
        fetch(sid, entry["generation"], build)
        final = home.generation_path(generation_name(number))
        os.replace(build, final)
        entry["generation"] = final.name
    (staging / "manifest.json").write_text(json.dumps(gen.manifest.to_json(), indent=1), encoding="utf-8")


# --- search ---------------------------------------------------------------------------------


class ShardAnswer(NamedTuple):
    """A shard Searcher's reply: the top generation it served, its hits, and how many shards that generation has."""

    generation: int
    results: list[SearchResults]
    shard_count: int


def merge_results(parts: Sequence[Sequence[SearchResult]], k: int, query: str | None = None) -> SearchResults:
    """The ``k`` best of several shards' results for one query, ranked again from 1.

    Sorted by :func:`~colbert_modal.search.result_key` (score, then source,
    first page, position in the file): each shard's list is its best ``k``
    by that key, so the merged list is the unsharded index's, ties included.
    """
    pooled = sorted((r for part in parts for r in part), key=result_key)
    out = SearchResults(query=query)
    for rank, r in enumerate(pooled[:k], start=1):
        out.append(r.model_copy(update={"rank": rank}))
    return out


def shard_generation(top: Generation, shard: str) -> Generation | None:
    """The generation of ``shard`` that the top generation ``top`` names (None: an empty shard).

    Raises IndexStorageError where it does not agree with the top manifest:
    its chunk count, or one of its files (hash, chunk ids, metadata),
    differs from what the top manifest records.
    """
    entry = (top.manifest.shards or {}).get(shard) or {}
    name = entry.get("generation")
    if not name:
        return None
    gen = load_generation(top.path.parent.parent / "shards" / shard / "generations" / name)
    m, files = gen.manifest, top.manifest.files
    problem = None  # (its manifest's own generation number is the source's where it was adopted: not compared)
    if m.n_chunks != entry.get("chunks"):
        problem = f"it holds {m.n_chunks} chunks where the top manifest says {entry.get('chunks')}"
    else:
        for p, e in m.files.items():
            t = files.get(p)
            if t is None or t.shard != shard or (t.content_hash, t.chunk_ids, t.metadata) != (
                    e.content_hash, e.chunk_ids, e.metadata):
                problem = f"its file {p[-200:]!r} is not the top manifest's"
                break
    if problem is not None:
        raise damaged_error(top.path / "manifest.json",
                            f"it does not agree with shard {shard} ({gen.path / 'manifest.json'}): {problem}")
    return gen


def shard_generations(top: Generation) -> dict[str, Generation | None]:
    """Every shard's generation that ``top`` names (:func:`shard_generation`), checked against it:
    between them the shards hold exactly the top manifest's files. Raises IndexStorageError."""
    gens = {sid: shard_generation(top, sid) for sid in top.manifest.shards or {}}
    held = sum(len(g.manifest.files) for g in gens.values() if g is not None)
    if held != len(top.manifest.files):
        raise damaged_error(top.path / "manifest.json",
                            f"it lists {len(top.manifest.files)} files where its shards hold {held}")
    return gens


class OpenShards(OpenIndex):
    """A sharded generation opened here, as :class:`~colbert_modal.search.OpenGeneration`: shards searched, merged."""

    def __init__(self, generation: Generation, **kwargs: Any) -> None:
        super().__init__(generation)
        self.parts: dict[str, OpenGeneration] = {}
        for sid, gen in shard_generations(generation).items():
            if gen is not None:
                self.parts[sid] = OpenGeneration(gen, **kwargs)

    def colbert_search(self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None
                       ) -> list[SearchResults]:
        """One merged list per query: each shard's top ``k``, then the best ``k`` of them (queries encoded once)."""
        from .engine import shared_query_encodings

        with shared_query_encodings():
            per_shard = [part.colbert_search(queries, k, where) for part in self.parts.values()]
        return [merge_results([res[i] for res in per_shard], k, q) for i, q in enumerate(queries)]

    def keyword_stats(self, queries: Sequence[str]) -> list[KeywordStats]:
        """The BM25 statistics of every shard together: each chunk scores as in the unsharded index."""
        return combine_stats([part.keyword_stats(queries) for part in self.parts.values()], len(queries))

    def keyword_search(self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None,
                       stats: Sequence[KeywordStats]) -> list[SearchResults]:
        per_shard = [part.keyword_search(queries, k, where, stats) for part in self.parts.values()]
        return [merge_results([res[i] for res in per_shard], k, q) for i, q in enumerate(queries)]


def open_generation(generation: Generation, **kwargs: Any) -> OpenGeneration | OpenShards:
    """``generation`` opened for search: :class:`OpenShards` for a sharded index, else ``OpenGeneration``."""
    if generation.manifest.shards is not None:
        return OpenShards(generation, **kwargs)
    return OpenGeneration(generation, **kwargs)


class OpenShard(OpenIndex):
    """One shard of a sharded top generation, as its search container serves it.

    ``name`` and ``manifest`` are the top generation's (what the container
    serves is the index at that generation); ``opened`` is the shard's own
    generation, loaded (None: the shard is empty).
    """

    def __init__(self, top: Generation, shard: str, opened: OpenGeneration | None) -> None:
        super().__init__(top)
        self.shard = shard
        self.opened = opened

    def colbert_search(self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None = None
                       ) -> list[SearchResults]:
        return self.opened.colbert_search(queries, k, where) if self.opened else [SearchResults(query=q) for q in queries]

    def keyword_stats(self, queries: Sequence[str]) -> list[KeywordStats]:
        return self.opened.keyword_stats(queries) if self.opened else combine_stats([], len(queries))

    def keyword_search(self, queries: Sequence[str], k: int, where: Mapping[str, Any] | None,
                       stats: Sequence[KeywordStats]) -> list[SearchResults]:
        return self.opened.keyword_search(queries, k, where, stats) if self.opened else self.colbert_search(queries, k)
