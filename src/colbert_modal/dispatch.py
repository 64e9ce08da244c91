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
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

__all__ = ["Dispatch", "Mode", "dispatchable", "mode_of"]

Mode = Literal["local", "remote"]
P = ParamSpec("P")
R = TypeVar("R")


class HasMode(Protocol):
    mode: Mode


S = TypeVar("S", bound=HasMode)

#: The side forced by ``.local`` / ``.remote`` for one object, for the duration of the call.
_FORCED: contextvars.ContextVar[tuple[int, Mode] | None] = contextvars.ContextVar("colbert_modal_mode", default=None)


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

    def _on(self, mode: Mode, *args: Any, **kwargs: Any) -> R:
        token = _FORCED.set((id(self._obj), mode))
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
