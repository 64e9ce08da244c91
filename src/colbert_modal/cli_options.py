"""The CLI's option parsers: ``--password``, ``--where`` / ``--where-json``, ``--meta`` / ``--meta-json``.

Pure functions (click only for its usage errors), tested directly and by
doctest; :mod:`colbert_modal.cli` re-exports them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .loaders import PasswordBook

__all__ = ["parse_meta_options", "parse_passwords", "parse_where_options", "read_jsonl_records"]


def parse_passwords(values: Sequence[str]) -> str | Mapping[str, str] | None:
    """``--password`` values to what :meth:`ColbertIndexer.index` takes.

    ``FILE.pdf=PW`` gives the password of one PDF (by path or by file name);
    any other value is the password for every other encrypted PDF (so a
    password may itself contain ``=``).

    >>> parse_passwords([]) is None
    True
    >>> parse_passwords(["s3cret"])
    's3cret'
    >>> pw = parse_passwords(["a.pdf=x=y", "common"])
    >>> pw["/any/folder/a.pdf"], pw["/other/b.pdf"]
    ('x=y', 'common')
    """
    by_file: dict[str, str] = {}
    default: str | None = None
    for value in values:
        key, sep, password = value.partition("=")
        if sep and key.lower().endswith(".pdf"):
            by_file[key] = password
        elif default is not None:
            raise click.UsageError("give at most one --password without FILE.pdf= (the password for all other PDFs)")
        else:
            default = value
    if not by_file:
        return default
    return PasswordBook(by_file, default)


_WHERE_OPS = (("!=", "$ne"), (">=", "$gte"), ("<=", "$lte"), (">", "$gt"), ("<", "$lt"), ("~", "$glob"), ("=", "$eq"))


def _json_or_text(text: str) -> Any:
    """``text`` parsed as JSON where it can be (numbers, true/false/null, lists, quoted strings), else the text."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def parse_where_options(values: Sequence[str], where_json: str | None = None) -> dict[str, Any] | None:
    """``--where`` / ``--where-json`` to the ``where`` dict :meth:`ColbertIndexer.search` takes.

    Each ``--where`` is ``FIELD OP VALUE`` with OP one of ``= != > >= < <=``
    and ``~`` (a shell pattern, ``$glob``); VALUE parses as JSON where it can
    (a list means any of). Conditions on one field combine (all must hold).

    >>> parse_where_options(["year=2023", "page>=10", "page<=40", "source~reports/*.pdf"])
    {'year': {'$eq': 2023}, 'page': {'$gte': 10, '$lte': 40}, 'source': {'$glob': 'reports/*.pdf'}}
    >>> parse_where_options(['lang=["en", "de"]', "title=Annual report"])
    {'lang': {'$in': ['en', 'de']}, 'title': {'$eq': 'Annual report'}}
    >>> parse_where_options([], '{"year": {"$gt": 2020}}')
    {'year': {'$gt': 2020}}
    """
    where: dict[str, Any] = {}
    if where_json is not None:
        try:
            loaded = json.loads(where_json)
        except (ValueError, RecursionError) as exc:
            raise click.BadParameter(f"not JSON: {str(exc)[:200]}", param_hint="--where-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object of conditions", param_hint="--where-json")
        where.update(loaded)
    for value in values:
        # the first operator in the text; at one position the longer one (">=" before ">")
        found = [(value.find(sym), -len(sym), sym, op) for sym, op in _WHERE_OPS if value.find(sym) > 0]
        if not found:
            raise click.BadParameter(
                f"{value!r}: use FIELD=VALUE, FIELD!=VALUE, FIELD>=VALUE (> < <=) or FIELD~PATTERN", param_hint="--where"
            )
        pos, _, sym, op = min(found)
        field = value[:pos].strip()
        text = value[pos + len(sym):].strip()
        arg = text if op == "$glob" else _json_or_text(text)
        if op == "$eq" and isinstance(arg, list):
            op = "$in"
        conds = where.setdefault(field, {})
        if not isinstance(conds, dict) or op in conds:
            raise click.BadParameter(f"{value!r}: {field!r} already has a condition {op}", param_hint="--where")
        conds[op] = arg
    return where or None


def parse_meta_options(values: Sequence[str], meta_json: Path | None = None) -> dict[str, dict[str, Any]] | None:
    """``--meta`` / ``--meta-json`` to the ``metadata`` mapping :meth:`ColbertIndexer.index` takes.

    ``--meta FILE:KEY=VALUE`` (FILE a path, file name or glob; VALUE parses
    as JSON where it can); ``--meta-json`` names a JSON file holding an
    object from path or glob to a dict.

    >>> parse_meta_options(["report.pdf:year=2023", "report.pdf:team=search", "*.md:draft=true"])
    {'report.pdf': {'year': 2023, 'team': 'search'}, '*.md': {'draft': True}}
    """
    meta: dict[str, dict[str, Any]] = {}
    if meta_json is not None:
        try:
            loaded = json.loads(Path(meta_json).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise click.BadParameter(f"{meta_json}: {str(exc)[:200]}", param_hint="--meta-json") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise click.BadParameter(f"{meta_json}: must be a JSON object from path or glob to an object",
                                     param_hint="--meta-json")
        meta.update(loaded)
    for value in values:
        left, eq, text = value.partition("=")
        target, colon, key = left.rpartition(":")
        if not eq or not colon or not target or not key:
            raise click.BadParameter(f"{value!r}: use FILE:KEY=VALUE, e.g. report.pdf:year=2023", param_hint="--meta")
        meta.setdefault(target, {})[key] = _json_or_text(text)
    return meta or None


def read_jsonl_records(lines: Iterable[str], name: str) -> list[Any]:
    """One JSON value per non-blank line (a record object, or a string), for ``index-texts``.

    A line that is not JSON is a usage error naming ``name`` and the line
    number; the records themselves are checked by ``index_texts``.

    >>> read_jsonl_records(['{"id": "a", "text": "x"}', "", '"plain text"'], "in.jsonl")
    [{'id': 'a', 'text': 'x'}, 'plain text']
    """
    out: list[Any] = []
    lines, number = iter(lines), 0
    while True:
        number += 1
        try:
            line = next(lines)
        except StopIteration:
            break
        except UnicodeDecodeError as exc:
            raise click.UsageError(f"{name}, line {number}: not UTF-8 ({exc.reason})") from None
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            raise click.UsageError(f"{name}, line {number}: not JSON ({exc})") from None
    return out
