"""Search within a subset: the ``where`` filter language and per-file metadata checks.

A ``where`` is a dict of conditions, all of which must hold::

    {"year": 2023}                              equality
    {"lang": ["en", "de"]}                      any of
    {"page": {"$gte": 10, "$lte": 40}}          operators (all must hold)
    {"source": {"$glob": "reports/*.pdf"}}      shell pattern on the path or its tail

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $glob``. Fields: any
metadata key (the user's or a loader's), ``source`` (the file's absolute
path, or a text record's id) and ``page`` (holds when any of the chunk's pages satisfies the
condition). A condition holds only on chunks that have the field, so a field
no chunk has gives an empty result. Where a field's value is a list, a
positive operator holds when one element satisfies it, ``$ne``/``$nin``
when none is excluded.

:func:`parse_where` checks a ``where`` before any work (a
:class:`~colbert_modal.errors.ConfigurationError`, a ``ValueError``, for an
unknown operator, a malformed value, a type mismatch); :class:`ChunkColumns`
holds what filters need of an index's chunks in a few numpy arrays (a code
per chunk for its (source, metadata) combination, its pages) and evaluates a
parsed filter to the matching chunk positions, checking the condition
values against the kinds of values each field holds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .records import Chunk, public_source

__all__ = [
    "BUILTIN_FIELDS",
    "OPERATORS",
    "ChunkColumns",
    "Condition",
    "check_metadata",
    "parse_where",
]

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$glob")
#: Fields every chunk has without metadata; a user metadata key cannot take these names.
BUILTIN_FIELDS = ("source", "page")
_ORDER = {"$gt", "$gte", "$lt", "$lte"}
_NEGATIVE = {"$ne", "$nin"}


@dataclass(frozen=True)
class Condition:
    """One checked condition: ``field op value`` (``value`` a tuple for ``$in``/``$nin``, and
    ``members`` its values as a set of ``(kind, value)``: one lookup per value a chunk holds)."""

    field: str
    op: str
    value: Any
    members: frozenset[tuple[str, Any]] = dataclasses.field(default=frozenset(), compare=False, repr=False)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


_KIND_NAMES = {"null": "null", "bool": "a boolean", "number": "a number", "string": "a string"}
#: Pages are int32: a page value outside this range matches no chunk.
_PAGE_RANGE = (-(2**31), 2**31 - 1)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 5


def _short(value: Any) -> str:
    """``repr(value)``, cut short (a few elements, levels, characters): error messages stay a line long."""
    return _REPR.repr(value)


def _valid_text(value: Any) -> bool:
    """False for a string that cannot be stored as UTF-8 (a lone surrogate)."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_scalar(v: Any) -> bool:
    return _kind(v) != "other" and not (isinstance(v, float) and not math.isfinite(v))


def parse_where(where: Mapping[str, Any] | None) -> list[Condition]:
    """``where`` as a list of :class:`Condition` (empty: no filter); raises ConfigurationError.

    >>> parse_where({"year": 2023, "page": {"$gte": 10}})
    [Condition(field='year', op='$eq', value=2023), Condition(field='page', op='$gte', value=10)]
    """
    if where is None:
        return []
    if not isinstance(where, Mapping):
        raise ConfigurationError(f"where must be a dict of conditions, e.g. {{'year': 2023}}, got {_short(where)}")
    out: list[Condition] = []
    for field, spec in where.items():
        if not isinstance(field, str) or not field or field.startswith("$"):
            raise ConfigurationError(f"where: {_short(field)} is not a field name (operators go inside a field's dict)")
        if isinstance(spec, Mapping):
            if not spec:
                raise ConfigurationError(f"where[{_short(field)}]: an empty operator dict; use e.g. {{'$eq': value}}")
            for op, value in spec.items():
                out.append(_condition(field, op, value))
        elif isinstance(spec, (list, tuple)):
            out.append(_condition(field, "$in", spec))
        else:
            out.append(_condition(field, "$eq", spec))
    return out


def _condition(name: str, op: Any, value: Any) -> Condition:
    where = f"where[{_short(name)}]"
    if op not in OPERATORS:
        raise ConfigurationError(f"{where}: unknown operator {_short(op)}; use one of {', '.join(OPERATORS)}")
    if op in ("$in", "$nin"):
        bad = [value] if not isinstance(value, (list, tuple)) else [v for v in value if not _is_scalar(v)][:1]
        if bad:
            raise ConfigurationError(f"{where}: {op} takes a list of strings, numbers, booleans or null; "
                                     f"{_short(bad[0])} is not one")
        values: tuple[Any, ...] = tuple(value)
    elif not _is_scalar(value):
        raise ConfigurationError(f"{where}: {op} takes a string, number, boolean or null, got {_short(value)}")
    else:
        values = (value,)
    if op in _ORDER and _kind(value) not in ("number", "string"):
        raise ConfigurationError(f"{where}: {op} compares numbers or strings, got {_short(value)}")
    if op == "$glob" and not isinstance(value, str):
        raise ConfigurationError(f"{where}: $glob takes a shell pattern string, got {_short(value)}")
    want = {"page": "number", "source": "string"}.get(name)
    if want is not None:
        bad = [v for v in values if _kind(v) != want or (name == "page" and v != int(v))]
        if bad or (name == "page" and op == "$glob"):
            kind = "whole page numbers (1-based)" if name == "page" else "absolute paths (strings)"
            shown = _short(bad[0] if bad else value)
            raise ConfigurationError(f"{where}: {name!r} holds {kind}; {op} {shown} does not fit")
    if op in ("$in", "$nin"):
        return Condition(name, op, values, frozenset((_kind(v), v) for v in values))
    return Condition(name, op, value)


def check_metadata(metadata: Any, where: str, reserved: Iterable[str]) -> dict[str, Any]:
    """``metadata`` if it is a dict of JSON scalars or lists of them with no reserved key; else ConfigurationError.

    ``where`` names the file (or the mapping entry) in the message.
    """
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"metadata for {where} must be a dict, got {type(metadata).__name__}")
    reserved = set(reserved) | set(BUILTIN_FIELDS)
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ConfigurationError(
                f"metadata for {where}: key {_short(key)} must be a non-empty string not starting with '$'")
        if key in reserved:
            raise ConfigurationError(
                f"metadata for {where}: key {key!r} is a built-in field set by colbert_modal "
                f"({', '.join(sorted(reserved))}); rename it, e.g. 'user_{key}'"
            )
        ok = _is_scalar(value) or (isinstance(value, (list, tuple)) and all(_is_scalar(v) for v in value))
        if not ok:
            raise ConfigurationError(f"metadata for {where}: {_short(key)} must be a string, number, boolean, null "
                                     f"or a list of them, got {_short(value)}")
        if not (_valid_text(key) and all(_valid_text(v) for v in (value if isinstance(value, (list, tuple)) else [value]))):
            raise ConfigurationError(f"metadata for {where}: {_short(key)} holds text that is not valid Unicode "
                                     "(a lone surrogate); fix it")
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def glob_path(path: str, pattern: str) -> bool:
    """True if shell ``pattern`` matches the whole ``path`` or its last components (as many as the pattern has)."""
    norm = path.replace(os.sep, "/")
    pat = pattern.replace(os.sep, "/")
    if fnmatch.fnmatchcase(norm, pat):
        return True
    if pat.startswith("/"):
        return False
    n = pat.count("/") + 1
    return fnmatch.fnmatchcase("/".join(norm.split("/")[-n:]), pat)


def _holds(value: Any, op: str, arg: Any, *, path: bool = False) -> bool:
    """Whether one scalar ``value`` satisfies ``op arg`` (values of another kind never do)."""
    if _kind(value) != _kind(arg):
        return False
    if op in ("$eq", "$ne"):
        return bool(value == arg)
    if op == "$glob":
        return glob_path(value, arg) if path else fnmatch.fnmatchcase(value, arg)
    if op == "$gt":
        return bool(value > arg)
    if op == "$gte":
        return bool(value >= arg)
    if op == "$lt":
        return bool(value < arg)
    return bool(value <= arg)


def _field_holds(values: Sequence[Any], cond: Condition, *, path: bool = False) -> bool:
    """A condition over a field's value(s): any element for positive ops, none excluded for ``$ne``/``$nin``."""
    op, arg = cond.op, cond.value
    if op in ("$in", "$nin"):  # a set lookup per value (kinds kept apart: True is not 1)
        found = any((k := _kind(v)) != "other" and (k, v) in cond.members for v in values)
        return found if op == "$in" else not found
    if op == "$ne":
        return not any(_holds(v, "$eq", arg) for v in values)
    return any(_holds(v, op, arg, path=path) for v in values)


class ChunkColumns:
    """What filters need of an index's chunks, columnar: ~12 bytes per chunk plus the distinct combinations.

    ``combo[i]`` is the code of chunk ``i``'s (source, metadata) combination
    (consecutive chunks of one file share it); ``page_offsets`` /
    ``page_values`` hold each chunk's pages (CSR). Conditions on metadata and
    ``source`` are evaluated once per combination, ``page`` conditions on
    the page array, both vectorised over the chunks.
    """

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        import numpy as np

        sources: list[str] = []
        metas: list[dict[str, Any]] = []
        codes: dict[tuple[str, str], int] = {}
        combo: list[int] = []
        offsets = [0]
        pages: list[int] = []
        last: tuple[str, dict[str, Any], int] | None = None
        for c in chunks:
            if last is not None and c.source == last[0] and c.metadata == last[1]:
                code = last[2]
            else:
                key = (c.source, json.dumps(c.metadata, sort_keys=True, default=str))
                code = codes.get(key, -1)
                if code < 0:
                    code = codes[key] = len(sources)
                    sources.append(public_source(c.source))  # a text record's: its id, as hits show it
                    metas.append(dict(c.metadata))
                last = (c.source, c.metadata, code)
            combo.append(code)
            pages.extend(c.pages)
            offsets.append(len(pages))
        self.sources = sources
        self.metadata = metas
        self.combo = np.asarray(combo, dtype=np.int32)
        self.page_offsets = np.asarray(offsets, dtype=np.int64)
        self.page_values = np.asarray(pages, dtype=np.int32)
        self._kinds: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.combo)

    @property
    def nbytes(self) -> int:
        """Bytes of the per-chunk arrays (the distinct combinations are per file, not per chunk)."""
        return int(self.combo.nbytes + self.page_offsets.nbytes + self.page_values.nbytes)

    def kinds(self, field: str) -> set[str]:
        """The kinds of value (``"number"``, ``"string"``, ...) that ``field`` holds anywhere; empty if none."""
        if field not in self._kinds:
            found: set[str] = set()
            for meta in self.metadata:
                if field in meta:
                    v = meta[field]
                    found.update(_kind(x) for x in (v if isinstance(v, list) else [v]))
            self._kinds[field] = found
        return self._kinds[field]

    def check(self, conditions: Sequence[Condition]) -> None:
        """Raise ConfigurationError where a condition's value is of a kind its field never holds."""
        for cond in conditions:
            if cond.field in BUILTIN_FIELDS:
                continue  # checked by parse_where
            held = self.kinds(cond.field) - {"null"}
            args = cond.value if cond.op in ("$in", "$nin") else (cond.value,)
            for a in args:
                k = _kind(a)
                if held and k != "null" and k not in held:
                    names = " or ".join(sorted(_KIND_NAMES.get(h, h) for h in held))
                    raise ConfigurationError(
                        f"where[{_short(cond.field)}]: type mismatch: the field holds {names}, "
                        f"but {cond.op} got {_short(a)} ({_KIND_NAMES[k]})"
                    )
            if cond.op == "$glob" and held and "string" not in held:
                raise ConfigurationError(f"where[{_short(cond.field)}]: $glob matches strings, the field holds none")

    def select(self, conditions: Sequence[Condition]) -> Any:
        """The positions (sorted int64 array) of the chunks where every condition holds."""
        import numpy as np

        self.check(conditions)
        mask = np.ones(len(self.combo), dtype=bool)
        combo_ok = np.ones(len(self.sources), dtype=bool)
        for cond in conditions:
            if cond.field == "page":
                mask &= self._pages_hold(cond)
                continue
            ok = np.zeros(len(self.sources), dtype=bool)
            for i, (src, meta) in enumerate(zip(self.sources, self.metadata, strict=True)):
                if not combo_ok[i]:
                    continue
                if cond.field == "source":
                    ok[i] = _field_holds([src], cond, path=True)
                elif cond.field in meta:
                    v = meta[cond.field]
                    ok[i] = _field_holds(v if isinstance(v, list) else [v], cond)
            combo_ok &= ok
        if not combo_ok.all():
            mask &= combo_ok[self.combo]
        return np.flatnonzero(mask)

    def _pages_hold(self, cond: Condition) -> Any:
        import numpy as np

        pv = self.page_values
        op, arg = cond.op, cond.value
        if op in ("$in", "$nin"):  # a page beyond int32 matches nothing (and would not fit the array)
            wanted = np.asarray([int(a) for a in arg if _PAGE_RANGE[0] <= a <= _PAGE_RANGE[1]], dtype=np.int64)
            hit = np.isin(pv, wanted) if op == "$in" else ~np.isin(pv, wanted)
        else:
            import operator

            compare = {"$eq": operator.eq, "$ne": operator.ne, "$gt": operator.gt, "$gte": operator.ge,
                       "$lt": operator.lt, "$lte": operator.le}[op]
            hit = compare(pv, np.int64(min(max(int(arg), _PAGE_RANGE[0] - 1), _PAGE_RANGE[1] + 1)))
        seen = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
        return seen[self.page_offsets[1:]] > seen[self.page_offsets[:-1]]
