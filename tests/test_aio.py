"""``await indexer.search.aio(...)``: local work in a worker thread, remote calls through modal's ``.remote.aio``.

Run under ``asyncio.run`` inside plain tests (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.dispatch import Mode, await_, bridged, dispatchable, mode_of
from colbert_modal.runners.local import LocalRunner
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixtures)
from test_standin_remote import _put_papers, _remote, hub_model, papers_index, standin  # noqa: F401 (fixtures)


class Thing:
    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self.seen: list[str] = []

    @dispatchable
    def where(self, x: int, *, delay: float = 0.0) -> tuple[str, int, bool]:
        """The side, the thread and whether the body may await: as a runner sees them."""
        if bridged():
            await_(asyncio.sleep(delay))
        else:
            time.sleep(delay)
        return f"{mode_of(self)}:{x}", threading.get_ident(), bridged()

    @dispatchable
    def waits(self) -> None:
        try:
            await_(asyncio.sleep(30))
        except asyncio.CancelledError:
            self.seen.append("cancelled in the body")
            raise


async def _with_ticker(work: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """``work()``'s result and how often a 10 ms ticker ticked meanwhile (0-1 if the loop was blocked)."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        return await work(), ticks
    finally:
        ticker.cancel()


def test_local_aio_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    local = Thing("local")

    async def main() -> tuple[Any, int]:
        return await _with_ticker(lambda: asyncio.gather(local.where.aio(1, delay=0.3), local.where.aio(2, delay=0.3)))

    (a, b), ticks = asyncio.run(main())
    assert a[0] == "local:1" and b[0] == "local:2"
    assert a[1] != loop_thread and b[1] != loop_thread and not a[2]
    assert ticks >= 10  # the loop ran while both slept in their threads


def test_remote_aio_awaits_on_the_loops_thread_and_cancels_there() -> None:
    thing = Thing("remote")

    async def main() -> tuple[list[Any], int, float]:
        t0 = time.perf_counter()
        results, ticks = await _with_ticker(lambda: asyncio.gather(*(thing.where.aio(i, delay=0.3) for i in range(8))))
        elapsed = time.perf_counter() - t0
        task = asyncio.create_task(thing.waits.aio())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return results, ticks, elapsed

    results, ticks, elapsed = asyncio.run(main())
    loop_thread = threading.get_ident()  # asyncio.run runs the loop here
    assert [r[0] for r in results] == [f"remote:{i}" for i in range(8)]
    assert {r[1] for r in results} == {loop_thread} and all(r[2] for r in results)  # no thread: awaited on the loop
    assert elapsed < 1.5 and ticks >= 10  # eight 0.3 s awaits overlapped
    assert thing.seen == ["cancelled in the body"]
    assert not bridged()
    never = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match=r"outside an \.aio call"):
        await_(never)
    never.close()


def test_mypy_sees_the_signature_of_aio(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "use.py"
    snippet.write_text(textwrap.dedent("""
        from colbert_modal import ColbertIndexer
        async def f(idx: ColbertIndexer) -> None:
            reveal_type(await idx.search.aio("q", k=3))
            reveal_type(await idx.info.aio())
            await idx.search_batch.aio(["q"], kk=3)
    """), encoding="utf-8")
    out, _, status = api.run([str(snippet), "--no-incremental", "--cache-dir=/dev/null", "--follow-imports=silent"])
    assert status == 1, out
    assert re.search(r'use.py:4: note: Revealed type is "(builtins\.)?list\[colbert_modal\.\w+\.SearchResult\]"', out), out
    assert re.search(r'use.py:5: note: Revealed type is "colbert_modal\.\w+\.IndexInfo"', out), out
    assert 'Unexpected keyword argument "kk" for "aio" of "Dispatch"' in out


def test_local_indexer_aio_searches_concurrently_without_blocking_the_loop(
    built_index: tuple[dict[str, Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs, report = built_index
    idx = ColbertIndexer("shared", **kwargs)
    queries = ["penguin quartz rhubarb", "flamingo glacier", "meteor shower harbour"]
    expected = [idx.search(q, k=3) for q in queries]
    threads: list[int] = []
    real = LocalRunner.search_batch

    def slow_search_batch(self: LocalRunner, *args: Any) -> Any:  # the real search, made long enough to see
        threads.append(threading.get_ident())
        time.sleep(0.2)
        return real(self, *args)

    monkeypatch.setattr(LocalRunner, "search_batch", slow_search_batch)

    async def main() -> tuple[Any, int]:
        return await _with_ticker(lambda: asyncio.gather(
            *(idx.search.aio(q, k=3) for q in queries), idx.search_batch.aio(queries, k=3), idx.info.aio(),
        ))

    (*singles, batch, info), ticks = asyncio.run(main())
    assert singles == expected and batch == expected
    assert info.documents == report.documents_total
    assert threading.get_ident() not in threads and len(threads) == 4
    assert ticks >= 10  # four 0.2 s searches ran while the loop ticked


def test_remote_aio_through_the_inprocess_transport(
    inprocess: Path, built_index: tuple[dict[str, Any], Any], corpus_dir: Path, tmp_path: Path
) -> None:
    kwargs, report = built_index
    shutil.copytree(Path(kwargs["index_root"]) / "shared", inprocess / "shared")
    idx = ColbertIndexer("shared", mode="remote", index_root=tmp_path / "local", progress=False)
    queries = ["penguin quartz rhubarb", "flamingo glacier"]
    expected = ColbertIndexer("shared", **kwargs).search_batch(queries, k=2)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(idx.search.aio(q, k=2) for q in queries), idx.info.aio(),
            idx.search_batch.aio(queries, k=2),
        )

    *singles, info, batch = asyncio.run(main())
    assert singles == expected and batch == expected
    assert info.documents == report.documents_total and idx._remote is not None

    # index.aio and delete.aio: planned in a worker thread, applied "on Modal"; two shards, searched together
    new = ColbertIndexer(
        "fresh", mode="remote", model=kwargs["model"], index_root=tmp_path / "l2", progress=False, shards=2
    )
    made = asyncio.run(new.index.aio([corpus_dir / "notes"]))
    assert made.chunks_written > 0 and (inprocess / "fresh" / "CURRENT").exists()
    assert new._remote is not None and len(new._remote.session.shard_ids("fresh") or []) == 2

    async def both() -> list[Any]:
        return await asyncio.gather(new.search.aio("meteor shower harbour", k=2), new.search.aio("walrus", k=1))

    meteor, walrus = asyncio.run(both())
    assert meteor == new.search("meteor shower harbour", k=2) and len(meteor) == 2
    assert meteor[0].source.endswith("meteor.md") and walrus[0].source.endswith("plain.txt")
    gone = asyncio.run(new.delete.aio([corpus_dir / "notes" / "plain.txt"]))
    assert gone.documents_total == made.documents_total - 1


class _NoThreads(ThreadPoolExecutor):
    """A default executor that refuses work: ``asyncio.to_thread`` (a thread per call) fails the test."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an .aio call used a worker thread")


def test_remote_aio_uses_modals_remote_aio_through_the_standin(
    standin: StandIn, papers_index: Path, tmp_path: Path  # noqa: F811 (fixtures)
) -> None:
    """The real modal client against the stand-in: once connected, concurrent searches take no thread."""
    _put_papers(standin, papers_index)
    idx = _remote(tmp_path)
    queries = ["penguin quartz rhubarb", "flamingo glacier", "meteor shower harbour"]

    async def main() -> tuple[Any, Any, int]:
        info = await idx.info.aio()  # connects (starts the app run) in a worker thread, once
        asyncio.get_running_loop().set_default_executor(_NoThreads())
        results, ticks = await _with_ticker(lambda: asyncio.gather(*(idx.search.aio(q, k=1) for q in queries)))
        return info, results, ticks

    try:
        info, results, _ = asyncio.run(main())
        assert info.documents > 0
        assert [r[0].source.rsplit("/", 1)[-1] for r in results] == ["bestiary.pdf", "atlas.pdf", "meteor.md"]
        assert results == [idx.search(q, k=1) for q in queries]
    finally:
        idx.close()
    assert len(standin.calls_of("Searcher.search_batch")) == 2 * len(queries)


def test_cancelling_a_remote_aio_search_through_the_standin(
    standin: StandIn, papers_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (fixtures)
) -> None:
    """Cancelling the task ends the wait at once; the session goes on (the container finishes its input)."""
    from colbert_modal.remote.server import IndexServer

    _put_papers(standin, papers_index)
    real = IndexServer.search_batch

    def slow(self: IndexServer, queries: Any, *args: Any, **kwargs: Any) -> Any:
        if queries == ["slow"]:
            time.sleep(3)
        return real(self, queries, *args, **kwargs)

    monkeypatch.setattr(IndexServer, "search_batch", slow)
    idx = _remote(tmp_path)

    async def main() -> tuple[float, Any]:
        await idx.info.aio()
        task = asyncio.create_task(idx.search.aio("slow", k=1))
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - t0, await idx.search.aio("penguin", k=1)

    try:
        waited, after = asyncio.run(main())
    finally:
        idx.close()
    assert waited < 1.0  # not the 3 s the body takes
    assert after[0].source.endswith("bestiary.pdf")
    assert len(standin.calls_of("Searcher.search_batch")) == 2
