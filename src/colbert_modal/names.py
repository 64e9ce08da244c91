"""Names on disk: index names, and generation names (the only place they are made and read).

An index is a folder named by :func:`validate_index_name` under an index
root (:func:`default_index_root`); its generations are folders named
``g000001``, ``g000002``, ... (:func:`generation_name`,
:func:`generation_number`). Re-exported by :mod:`colbert_modal.store`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidIndexNameError
from .paths import user_dir

__all__ = [
    "default_index_root",
    "generation_name",
    "generation_number",
    "is_generation_name",
    "is_plain_name",
    "validate_index_name",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_GEN = re.compile(r"g(\d{6})")
#: Names Windows reserves for devices, in any case and with any extension.
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is a valid index name (see :func:`validate_index_name`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and name.lower() not in _RESERVED


def is_generation_name(name: str) -> bool:
    """Whether ``name`` is a published generation's folder name (``"g000003"``, not a build's ``.g000003-*``)."""
    return _GEN.fullmatch(name) is not None


def validate_index_name(name: str) -> str:
    """Return ``name`` if it is a plain index name, else raise InvalidIndexNameError."""
    if not is_plain_name(name):
        raise InvalidIndexNameError(
            f"invalid index name {name!r}: use 1-128 letters, digits, '-' or '_', "
            "starting with a letter or digit (no '/', '..', spaces, newlines or absolute paths, "
            "nor a name Windows reserves such as CON or NUL)"
        )
    return name


def default_index_root() -> Path:
    """``$COLBERT_MODAL_INDEX_ROOT``, else a per-user data directory.

    Linux: ``$XDG_DATA_HOME/colbert-modal`` (``~/.local/share/colbert-modal``);
    macOS: ``~/Library/Application Support/colbert-modal``;
    Windows: ``%LOCALAPPDATA%\\colbert-modal``. Never the working directory.
    """
    return user_dir("data", "colbert-modal", env="COLBERT_MODAL_INDEX_ROOT")


def generation_name(number: int) -> str:
    """The directory name of generation ``number``: 3 -> ``"g000003"`` (the only place names are made)."""
    return f"g{number:06d}"


def generation_number(name: str | None) -> int:
    """The number of a generation's directory name: ``"g000003"`` -> 3; None (no generation) -> 0."""
    if name is None:
        return 0
    m = _GEN.fullmatch(name)
    if m is None:
        raise ValueError(f"not a generation name: {name!r}")
    return int(m.group(1))
