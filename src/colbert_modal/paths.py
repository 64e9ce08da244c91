"""Per-user directories, one rule for every platform (the index root, the OCR cache)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_dir"]

#: Where each kind of directory lives: Linux (XDG variable, default under home), macOS (under home).
_KINDS = {
    "data": ("XDG_DATA_HOME", (".local", "share"), ("Library", "Application Support")),
    "cache": ("XDG_CACHE_HOME", (".cache",), ("Library", "Caches")),
}


def user_dir(kind: str, *parts: str, env: str | None = None) -> Path:
    """``$env`` where set, else the per-user ``kind`` ("data" or "cache") directory joined with ``parts``; absolute.

    Linux: ``$XDG_DATA_HOME`` (``~/.local/share``) / ``$XDG_CACHE_HOME`` (``~/.cache``); macOS:
    ``~/Library/Application Support`` / ``~/Library/Caches``; Windows: ``%LOCALAPPDATA%`` for both.
    """
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser().absolute()
    xdg, linux, mac = _KINDS[kind]
    home = Path.home()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif os.uname().sysname == "Darwin":
        base = home.joinpath(*mac)
    else:
        base = Path(os.environ.get(xdg) or home.joinpath(*linux))
    return base.joinpath(*parts).absolute()
