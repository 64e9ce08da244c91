"""Client side of remote mode (Modal). Filled in by the remote-mode work."""

from __future__ import annotations

from typing import Any

from .errors import RemoteError


def _unavailable(*_: Any, **__: Any) -> Any:
    raise RemoteError("remote mode is not available in this version yet")


index = delete = search_batch = info = pull = push = _unavailable
