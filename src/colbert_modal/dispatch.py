"""Methods that run in their object's mode, or explicitly ``.local`` / ``.remote``, typed for editors.

:class:`~colbert_modal.ColbertIndexer` writes each operation once, as an
ordinary method decorated with :func:`dispatchable`::

    indexer.search("q")          # in indexer.mode
    indexer.search.local("q")    # in this process, whatever the mode
    indexer.search.remote("q")   # on Modal, whatever the mode

The method's body asks :func:`mode_of` which side it runs on and picks its
backend accordingly (see :mod:`colbert_modal.backends`). The side chosen by
``.local`` / ``.remote`` is kept in a context variable for the duration of
the call, so nested calls on the same object (``search`` calling
``search_batch``) run on the same side, across threads started with the
context copied (``asyncio.to_thread``) too.

The descriptor is generic in the method's parameters (``ParamSpec``):
``indexer.search.local`` has ``search``'s signature for mypy and editors.

Every dispatchable method also has an awaitable variant, Modal's spelling::

    await indexer.search.aio("q")

On the local side the call runs in a worker thread (``asyncio.to_thread``,
the context copied, so a forced side holds there) and never blocks the
event loop. On the remote side the same synchronous body runs in a
greenlet on the loop's thread; where it reaches Modal, the runner hands
the call to :func:`await_`, which awaits modal's own ``.remote.aio`` on the
loop and resumes the body with its result (the way SQLAlchemy's asyncio
layer drives sync code): no thread per call, and cancelling the task
cancels that await. Without greenlet installed, the remote side runs in a
worker thread too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

__all__ = ["Dispatch", "Mode", "await_", "bridged", "dispatchable", "mode_of"]

Mode = Literal["local", "remote"]
P = ParamSpec("P")
R = TypeVar("R")


class HasMode(Protocol):
    mode: Mode


S = TypeVar("S", bound=HasMode)

#: The side forced by ``.local`` / ``.remote`` for one object, for the duration of the call.
_FORCED: contextvars.ContextVar[tuple[int, Mode] | None] = contextvars.ContextVar("colbert_modal_mode", default=None)
#: The greenlet an ``.aio`` call runs its remote body in (see :func:`bridged`).
_BRIDGE: contextvars.ContextVar[Any] = contextvars.ContextVar("colbert_modal_aio_bridge", default=None)


def mode_of(obj: HasMode) -> Mode:
    """The side a dispatchable method of ``obj`` runs on now: forced by ``.local``/``.remote``, else ``obj.mode``."""
    forced = _FORCED.get()
    if forced is not None and forced[0] == id(obj):
        return forced[1]
    return obj.mode


class Dispatch(Generic[P, R]):
    """A dispatchable method bound to its object: call it, or force a side with ``.local`` / ``.remote``."""

    def __init__(self, fn: Callable[Concatenate[Any, P], R], obj: HasMode) -> None:
        self._fn = fn
        self._obj = obj
        functools.update_wrapper(self, fn)
        sig = inspect.signature(fn)  # as a bound method's: without self
        self.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(self._obj, *args, **kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run in this process, on this machine's CPU/GPU."""
        return self._on("local", *args, **kwargs)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run on Modal (the index on a Modal Volume)."""
        return self._on("remote", *args, **kwargs)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await the call on the event loop: local work in a worker thread; remote calls through modal's ``.aio``."""
        mode = mode_of(self._obj)
        if mode == "remote":
            bridge = _greenlet_bridge()
            if bridge is not None:
                return await bridge(self._on, mode, *args, **kwargs)
        return await asyncio.to_thread(self._on, mode, *args, **kwargs)

    def _on(self, side: Mode, /, *args: Any, **kwargs: Any) -> R:  # positional-only: search() takes a mode= too
        token = _FORCED.set((id(self._obj), side))
        try:
            return self._fn(self._obj, *args, **kwargs)
        finally:
            _FORCED.reset(token)

    def __repr__(self) -> str:
        name = getattr(self._fn, "__name__", "?")
        return f"<dispatchable {type(self._obj).__name__}.{name} (mode={self._obj.mode!r})>"


class dispatchable(Generic[S, P, R]):
    """Decorator: a method of an object with a ``mode`` that also has ``.local`` / ``.remote``."""

    def __init__(self, fn: Callable[Concatenate[S, P], R]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> dispatchable[S, P, R]: ...

    @overload
    def __get__(self, obj: S, owner: type | None = None) -> Dispatch[P, R]: ...

    def __get__(self, obj: S | None, owner: type | None = None) -> dispatchable[S, P, R] | Dispatch[P, R]:
        if obj is None:
            return self
        return Dispatch(self._fn, obj)


# --- the remote side of .aio: a sync body run in a greenlet, its Modal calls awaited on the loop -----


def bridged() -> bool:
    """Whether this code runs inside an ``.aio`` call's greenlet, where :func:`await_` may be called."""
    bridge = _BRIDGE.get()
    if bridge is None:
        return False
    import greenlet

    return bridge is greenlet.getcurrent()


def await_(awaitable: Awaitable[R]) -> R:
    """Await ``awaitable`` on the event loop from the sync body of an ``.aio`` call (see :func:`bridged`).

    The body's greenlet hands it to the loop's side and resumes with its
    result (or its exception, a cancellation included).
    """
    if not bridged():
        raise RuntimeError("await_() outside an .aio call's body")
    import greenlet

    parent = greenlet.getcurrent().parent
    assert parent is not None
    return parent.switch(awaitable)


def _greenlet_bridge() -> Callable[..., Awaitable[Any]] | None:
    try:
        import greenlet
    except ImportError:  # pragma: no cover - greenlet is a dependency; a thread then
        return None

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ctx = contextvars.copy_context()
        body = greenlet.greenlet(lambda: fn(*args, **kwargs))
        body.gr_context = ctx
        ctx.run(_BRIDGE.set, body)
        step = body.switch()
        while not body.dead:
            try:
                result = await step
            except BaseException as exc:  # a cancellation too: raised in the body where it awaited
                step = body.throw(exc)
            else:
                step = body.switch(result)
        return step

    return run
