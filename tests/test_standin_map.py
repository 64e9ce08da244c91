"""``.map()``, ``.starmap()``, ``.spawn()`` and ``FunctionCall.get()`` through the real modal client and the stand-in.

A toy app of this module's own (not modal_app): what sharded builds and fan-out
searches rely on, pinned down against modal 1.6's client. Calls made from inside
a body (a coordinator that starmaps over a class method) go through the stand-in
too: the test process has the app running, so the handles the body sees are
hydrated, as they are in a Modal container.
"""

# No `from __future__ import annotations`: it breaks `modal.parameter()` on `@app.cls` (modal 1.6).

import threading

import modal
import modal.exception
import pytest

from modal_standin import (  # noqa: F401 (fixture modal_standin)
    TIMEOUT,
    StandIn,
    standin_fixture,
    standin_server_fixture,
)

map_app = modal.App("standin-map")
_gate = threading.Event()
_enters: list[int] = []  # id() of each Shard instance whose @enter ran


class ShardError(Exception):
    """A failure with a plain message: it pickles, so it comes back as itself."""


class ShardFailed(Exception):
    """A failure whose ``__init__`` takes two arguments but passes one message on: it does not unpickle."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard


@map_app.function(timeout=60)
def square(x: int, offset: int = 0) -> int:
    if x < 0:
        raise ShardError(f"negative input {x}")
    if x == 100:
        raise ShardFailed(x, "no unpickling me")
    return x * x + offset


@map_app.function(timeout=60)
def gated(x: int) -> int:
    if x == 0:
        _gate.wait(30)  # input 0 finishes only when the test lets it
    return x


@map_app.cls(timeout=60)
class Shard:
    index_name: str = modal.parameter()

    @modal.enter()
    def open(self) -> None:
        _enters.append(id(self))
        self.busy = threading.Lock()

    @modal.method()
    def build(self, shard: int, size: int, *, backend: str = "exact") -> tuple[str, int, int, str]:
        # A container runs one input at a time (no @modal.concurrent): two at once on one instance is a bug.
        if not self.busy.acquire(blocking=False):
            raise RuntimeError("one instance ran two inputs at once")
        try:
            _gate.wait(0.05)  # long enough for the other inputs of a map to arrive meanwhile
            if size < 0:
                raise ShardError(f"shard {shard} has no chunks")
            return (self.index_name, shard, size, backend)
        finally:
            self.busy.release()


@map_app.function(timeout=60)
def coordinate(index_name: str, sizes: list[int]) -> list:
    """A coordinator: builds every shard in parallel, one input each, and collects per-shard errors."""
    builder = Shard(index_name=index_name)
    return list(
        builder.build.starmap(
            [(i, size) for i, size in enumerate(sizes)],
            kwargs={"backend": "plaid"},
            order_outputs=False,
            return_exceptions=True,
        )
    )


@map_app.function(timeout=60)
def fan_out_search(names: list[str]) -> list:
    """A coordinator that spawns one call per shard searcher and waits for each."""
    calls = [Shard(index_name=name).build.spawn(i, 1) for i, name in enumerate(names)]
    return [call.get() for call in calls]


@map_app.function(timeout=60)
def can_map() -> dict:
    """What a body can check to know whether its handles can be called remotely."""
    found = {
        "is_local": modal.is_local(),
        "input_id": modal.current_input_id(),
        "function_hydrated": square._is_hydrated,
        "cls_hydrated": Shard._is_hydrated,
        "bound_method_hydrated": Shard(index_name="x").build._is_hydrated,
    }
    try:
        square.hydrate()
        found["hydrate"] = "ok"
    except modal.exception.ExecutionError as exc:
        found["hydrate"] = str(exc)
    return found


def test_starmap_unordered_with_kwargs(modal_standin: StandIn) -> None:
    with map_app.run():
        assert list(square.map([1, 2, 3])) == [1, 4, 9]
        assert list(square.starmap([(1,), (2,), (3,)], kwargs={"offset": 10})) == [11, 14, 19]
        unordered = list(square.starmap([(i, 1) for i in range(6)], order_outputs=False))
        assert square.for_each([5, 6]) is None
    assert sorted(unordered) == [1, 2, 5, 10, 17, 26]
    calls = modal_standin.calls_of("square")
    assert len(calls) == 14
    assert calls[3].kwargs == {"offset": 10}
    assert sorted(c.idx for c in calls[6:12]) == list(range(6))
    assert sorted(c.args for c in calls[12:]) == [(5,), (6,)]
    assert {r for r in modal_standin.rpcs} >= {"FunctionMap", "FunctionPutInputs", "FunctionGetOutputs"}


def test_unordered_outputs_come_as_inputs_finish(modal_standin: StandIn) -> None:
    # The inputs run concurrently: 1 and 2 come back while 0 is still running.
    _gate.clear()
    try:
        with map_app.run():
            outputs = iter(gated.map([0, 1, 2], order_outputs=False))  # an iterable, not an iterator
            first_two = {next(outputs), next(outputs)}
            _gate.set()
            last = next(outputs)
            assert list(outputs) == []
    finally:
        _gate.set()
    assert (first_two, last) == ({1, 2}, 0)


def test_return_exceptions_gives_the_original_exception(modal_standin: StandIn) -> None:
    modal_standin.inject("square", ShardError("injected into input 1"), index=1)
    with map_app.run():
        results = list(square.starmap([(1,), (2,), (-3,), (4,), (100,)], return_exceptions=True))
    assert results[0] == 1 and results[3] == 16
    # The original class, with its message: no wrapper (modal 1.6 dropped UserCodeException wrapping).
    assert type(results[1]) is ShardError and str(results[1]) == "injected into input 1"
    assert type(results[2]) is ShardError and str(results[2]) == "negative input -3"
    assert not isinstance(results[2], modal.exception.Error)
    # An exception that does not unpickle on the client comes back as modal's ExecutionError.
    assert type(results[4]) is modal.exception.ExecutionError
    assert "Could not deserialize remote exception" in str(results[4])
    assert "shard 100: no unpickling me" in str(results[4])  # the remote traceback is in the message
    assert [c.status for c in sorted(modal_standin.calls_of("square"), key=lambda c: c.idx)] == [
        "SUCCESS",
        "FAILURE",
        "FAILURE",
        "SUCCESS",
        "FAILURE",
    ]


def test_return_exceptions_unordered_and_timeouts(modal_standin: StandIn) -> None:
    modal_standin.inject("square", ShardError("the third"), match=lambda args, kwargs: args == (3,))
    modal_standin.inject("square", TIMEOUT, index=0)
    with map_app.run():
        results = list(square.starmap([(i,) for i in range(5)], order_outputs=False, return_exceptions=True))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert sorted(r for r in results if not isinstance(r, BaseException)) == [1, 4, 16]
    assert sorted(type(e).__name__ for e in errors) == ["FunctionTimeoutError", "ShardError"]


def test_without_return_exceptions_the_first_failure_raises(modal_standin: StandIn) -> None:
    modal_standin.inject("square", ShardError("input 2 broke"), index=2)
    with map_app.run():
        with pytest.raises(ShardError, match="input 2 broke"):
            list(square.map(range(4)))
        with pytest.raises(ShardError, match="input 0 broke"):
            modal_standin.inject("square", ShardError("input 0 broke"), index=0)
            list(square.map(range(3), order_outputs=False))
    # The client does not cancel the other inputs: on Modal they run on to their end.
    assert "FunctionCallCancel" not in modal_standin.rpcs


def _wait_for(predicate, seconds: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("the stand-in never got there")


def test_ordered_outputs_still_run_concurrently(modal_standin: StandIn) -> None:
    # order_outputs=True only holds back delivery: inputs 1 and 2 finish while input 0 runs.
    _gate.clear()
    results: list = []
    try:
        with map_app.run():
            consumer = threading.Thread(target=lambda: results.extend(gated.map([0, 1, 2])))
            consumer.start()
            _wait_for(lambda: [c.status for c in modal_standin.calls_of("gated")] == ["running", "SUCCESS", "SUCCESS"])
            assert results == []
            _gate.set()
            consumer.join(30)
    finally:
        _gate.set()
    assert results == [0, 1, 2]


def test_spawn_and_get(modal_standin: StandIn) -> None:
    _gate.clear()
    try:
        with map_app.run():
            call = square.spawn(7, offset=1)
            assert call.get() == 50
            assert call.get(timeout=0) == 50  # the output stays; .get() may be called again
            waiting = gated.spawn(0)
            with pytest.raises(TimeoutError) as info:
                waiting.get(timeout=0.2)
            _gate.set()
            assert waiting.get() == 0
            modal_standin.inject("Shard.build", ShardError("spawned and failed"))
            failed = Shard(index_name="papers").build.spawn(0, 3)
            with pytest.raises(ShardError, match="spawned and failed"):
                failed.get()
    finally:
        _gate.set()
    # FunctionCall.get(timeout=...) running out raises the builtin TimeoutError, not modal's.
    assert type(info.value) is TimeoutError


def test_cancel_a_spawned_call(modal_standin: StandIn) -> None:
    _gate.clear()
    try:
        with map_app.run():
            waiting = gated.spawn(0)
            _wait_for(lambda: bool(modal_standin.calls_of("gated")))
            waiting.cancel()
            with pytest.raises(modal.exception.RemoteError):
                waiting.get()
    finally:
        _gate.set()
    assert modal_standin.calls_of("gated")[0].status == "TERMINATED"


def test_cls_method_starmap_with_parameter_and_options(modal_standin: StandIn) -> None:
    modal_standin.inject("Shard.build", ShardError("injected"), index=1)
    with map_app.run():
        builder = Shard(index_name="papers")
        results = list(
            builder.build.starmap([(0, 10), (1, 20), (2, 30)], kwargs={"backend": "plaid"}, return_exceptions=True)
        )
        big = Shard.with_options(gpu="H100", timeout=30)(index_name="big")
        assert list(big.build.map([5], [6])) == [("big", 5, 6, "exact")]
    assert results[0] == ("papers", 0, 10, "plaid") and results[2] == ("papers", 2, 30, "plaid")
    assert type(results[1]) is ShardError
    calls = modal_standin.calls_of("Shard.build")
    assert [c.params for c in calls] == [{"index_name": "papers"}] * 3 + [{"index_name": "big"}]
    assert calls[-1].gpus == ["H100"] and calls[-1].options.timeout_secs == 30


def test_starmap_from_inside_a_body(modal_standin: StandIn) -> None:
    modal_standin.inject("Shard.build", ShardError("shard 2 failed"), index=2)
    with map_app.run():
        results = coordinate.remote("papers", [5, 6, 7, -1])
    by_shard = {r[1]: r for r in results if not isinstance(r, BaseException)}
    assert by_shard == {0: ("papers", 0, 5, "plaid"), 1: ("papers", 1, 6, "plaid")}
    errors = sorted(str(r) for r in results if isinstance(r, BaseException))
    assert errors == ["shard 2 failed", "shard 3 has no chunks"]
    (outer,) = modal_standin.calls_of("coordinate")
    inner = modal_standin.calls_of("Shard.build")
    assert len(inner) == 4 and {c.parent_input_id for c in inner} == {outer.input_id}


def test_spawn_from_inside_a_body(modal_standin: StandIn) -> None:
    with map_app.run():
        assert fan_out_search.remote(["a", "b", "c"]) == [
            ("a", 0, 1, "exact"),
            ("b", 1, 1, "exact"),
            ("c", 2, 1, "exact"),
        ]
    # One variant per shard, so one "container" each.
    assert len({c.container for c in modal_standin.calls_of("Shard.build")}) == 3


def test_concurrent_inputs_of_one_variant_get_their_own_instance(modal_standin: StandIn) -> None:
    _gate.clear()
    _enters.clear()
    with map_app.run():
        builder = Shard(index_name="papers")
        first = list(builder.build.starmap([(i, 1) for i in range(4)]))
        second = list(builder.build.starmap([(i, 1) for i in range(4)]))
    assert first == second == [("papers", i, 1, "exact") for i in range(4)]
    calls = modal_standin.calls_of("Shard.build")
    containers = {c.container for c in calls}
    # Each instance ("container") ran one input at a time, @enter once each; idle ones were reused.
    assert len(_enters) == len(containers) == modal_standin.containers
    assert {c.container for c in calls[4:]} <= {c.container for c in calls[:4]}


def test_client_retries_a_failed_input(modal_standin: StandIn) -> None:
    modal_standin.inject("square", ShardError("flaky"), index=1)
    with map_app.run():
        retrying = square.with_options(retries=modal.Retries(max_retries=1, initial_delay=0.0))
        assert list(retrying.map([1, 2, 3])) == [1, 4, 9]
    (second,) = [c for c in modal_standin.calls_of("square") if c.idx == 1]
    assert (second.retry_count, second.status) == (1, "SUCCESS")
    assert "FunctionRetryInputs" in modal_standin.rpcs


def test_what_a_body_can_check(modal_standin: StandIn) -> None:
    with map_app.run():
        inside = can_map.remote()
    # In the stand-in, as in a Modal container, the app's functions and classes are hydrated;
    # a Cls bound to parameters is not until its first call (FunctionBindParams).
    assert inside["is_local"] is False  # as in a Modal container
    assert inside["input_id"] and inside["input_id"].startswith("in-")
    assert (inside["function_hydrated"], inside["cls_hydrated"], inside["bound_method_hydrated"]) == (True, True, False)
    assert inside["hydrate"] == "ok"

    plain = can_map.local()  # no app running
    assert plain["is_local"] is True
    assert plain["input_id"] is None
    assert (plain["function_hydrated"], plain["cls_hydrated"]) == (False, False)
    assert "the App it is defined on is not running" in plain["hydrate"]
