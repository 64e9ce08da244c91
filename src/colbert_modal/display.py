"""How hits and reports look: page labels, snippets, file links and the notebook tables.

Pure string functions, shared by the CLI (text) and the Jupyter views of
:class:`~colbert_modal.SearchResults`, :class:`~colbert_modal.SearchResult`
and :class:`~colbert_modal.IndexReport` (HTML). They take the records by
duck typing, so this module sits below :mod:`colbert_modal.records`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "file_uri",
    "format_pages",
    "make_snippet",
    "query_terms",
    "report_html",
    "result_html",
    "results_html",
]

_STOPWORDS = frozenset(
    "a an and are as at be by for from how in is it of on or that the this to was what when where which who why with".split()
)


def query_terms(query: str) -> list[str]:
    """The words of ``query`` worth highlighting (lowercase, no stopwords, no duplicates).

    >>> query_terms("What is late interaction in ColBERT?")
    ['late', 'interaction', 'colbert']
    """
    terms: list[str] = []
    for word in re.findall(r"\w+", query.lower()):
        if len(word) > 1 and word not in _STOPWORDS and word not in terms:
            terms.append(word)
    return terms


def make_snippet(
    text: str, query: str, *, width: int = 200, highlight: Callable[[str], str] | None = None,
    escape: Callable[[str], str] | None = None,
) -> str:
    """About ``width`` characters of ``text`` around the first query word, query words highlighted.

    Whitespace is collapsed; ``...`` marks cut ends; ``highlight`` wraps every
    word that starts with a query word (the CLI passes bold ``click.style``,
    the notebook table ``<mark>``); ``escape`` is applied to the text between
    highlights (``html.escape`` for HTML).

    >>> make_snippet("one two three four", "three", highlight=lambda w: f"[{w}]")
    'one two [three] four'
    >>> make_snippet("a " * 100 + "needle" + " b" * 100, "needle", width=20)
    '... a a needle b b b ...'
    >>> make_snippet("x < y for all y", "all", highlight=lambda w: f"<b>{w}</b>", escape=html.escape)
    'x &lt; y for <b>all</b> y'
    """
    flat = " ".join(text.split())
    terms = query_terms(query)
    pattern = (
        re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)) + r")\w*", re.I)
        if terms
        else None
    )
    match = pattern.search(flat) if pattern is not None else None
    if len(flat) <= width:
        start, end = 0, len(flat)
    else:
        anchor = match.start() if match else 0
        start = max(0, anchor - width // 3)
        end = min(len(flat), start + width)
        start = max(0, end - width)
        if start > 0:  # do not cut a word in half
            space = flat.find(" ", start, anchor if match else end)
            start = space + 1 if space != -1 else start
        if end < len(flat):
            space = flat.rfind(" ", max(start, (match.end() if match else start)), end)
            end = space if space != -1 else end
    window = flat[start:end]
    esc = escape or (lambda s: s)
    if pattern is not None and highlight is not None:
        parts: list[str] = []
        last = 0
        for m in pattern.finditer(window):
            parts.append(esc(window[last : m.start()]))
            parts.append(highlight(esc(m.group(0))))
            last = m.end()
        parts.append(esc(window[last:]))
        window = "".join(parts)
    else:
        window = esc(window)
    return ("... " if start > 0 else "") + window + (" ..." if end < len(flat) else "")


def format_pages(pages: Sequence[int]) -> str:
    """``[3]`` -> ``'p. 3'``, ``[3, 4]`` -> ``'pp. 3-4'``, ``[1, 2, 3, 5]`` -> ``'pp. 1-3, 5'``.

    >>> format_pages([3]), format_pages([4, 3]), format_pages([1, 2, 3, 5])
    ('p. 3', 'pp. 3-4', 'pp. 1-3, 5')
    """
    if not pages:
        return ""
    nums = sorted(set(pages))
    runs: list[str] = []
    first = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(str(first) if first == prev else f"{first}-{prev}")
        if n is not None:
            first = prev = n
    return ("p. " if len(nums) == 1 else "pp. ") + ", ".join(runs)


def file_uri(path: str, page: int | None = None) -> str:
    """A ``file://`` URI of ``path``; for a PDF with ``page``, ``#page=N`` (honoured by browsers' PDF viewers).

    >>> file_uri("/tmp/a b.pdf", 3)
    'file:///tmp/a%20b.pdf#page=3'
    >>> file_uri("/tmp/notes.md", 3)
    'file:///tmp/notes.md'
    """
    p = Path(path)
    uri = p.as_uri() if p.is_absolute() else p.absolute().as_uri()
    if page is not None and p.suffix.lower() == ".pdf":
        uri += f"#page={page}"
    return uri


_STYLE = (
    "<style>.cm-table td{vertical-align:top;text-align:left}.cm-table mark{background:#ffe066;padding:0}"
    ".cm-table .cm-num{text-align:right;white-space:nowrap}</style>"
)


def _mark(word: str) -> str:
    return f"<mark>{word}</mark>"


def _link(source: str, pages: Sequence[int]) -> str:
    if not pages:  # a text record's hit (index_texts): its id, no file to link
        return html.escape(source)
    uri = file_uri(source, pages[0] if pages else None)
    return f'<a href="{html.escape(uri)}" title="{html.escape(source)}">{html.escape(Path(source).name)}</a>'


def results_html(results: Sequence[Any], query: str | None, *, width: int = 240) -> str:
    """The notebook table of search hits: rank, score, file (linked), pages, snippet with query words marked."""
    caption = f"<caption>{len(results)} hits for <b>{html.escape(query)}</b></caption>" if query else ""
    rows = []
    for r in results:
        snippet = make_snippet(r.text, query or "", width=width, highlight=_mark, escape=html.escape)
        rows.append(
            f'<tr><td class="cm-num">{r.rank}</td><td class="cm-num">{r.score:.2f}</td>'
            f'<td style="text-align:left">{_link(r.source, r.pages)}</td><td class="cm-num">{format_pages(r.pages)}</td>'
            f'<td style="text-align:left">{snippet}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="5">no hits</td></tr>')
    return (
        _STYLE + '<table class="cm-table">' + caption
        + "<thead><tr><th>rank</th><th>score</th><th>file</th><th>pages</th><th>passage</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def result_html(result: Any, query: str | None, image_png: bytes | None = None, *, width: int = 600) -> str:
    """One hit: its page's thumbnail (``image_png``, if any) next to its file, pages, score and text."""
    import base64

    snippet = make_snippet(result.text, query or "", width=width, highlight=_mark, escape=html.escape)
    head = (
        f"<div><b>{result.rank}.</b> {_link(result.source, result.pages)} {format_pages(result.pages)}"
        f" &middot; score {result.score:.2f}</div>"
    )
    text = f'<td style="vertical-align:top;text-align:left">{head}<p>{snippet}</p></td>'
    image = ""
    if image_png is not None:
        data = base64.b64encode(image_png).decode("ascii")
        image = (
            '<td style="vertical-align:top"><img style="max-width:260px;border:1px solid #ccc" '
            f'src="data:image/png;base64,{data}" alt="page {result.page}"/></td>'
        )
    return _STYLE + f'<table class="cm-table"><tr>{image}{text}</tr></table>'


def report_html(report: Any) -> str:
    """An index report: the counts, then the skipped and the warned files, each in a table of its own."""
    counts = (
        f"<p><b>{html.escape(report.index_name)}</b>: {len(report.indexed)} indexed, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, {len(report.skipped)} skipped; "
        f"{report.chunks_written} chunks written, {report.chunks_total} in the index "
        f"({report.documents_total} files).</p>"
    )
    parts = [_STYLE, counts]
    if report.skipped:
        rows = "".join(
            f"<tr><td>{_link(s.path, [])}</td><td>{html.escape(s.error)}</td><td>{html.escape(s.reason)}</td></tr>"
            for s in report.skipped
        )
        parts.append(
            '<table class="cm-table"><caption>skipped files</caption>'
            f"<thead><tr><th>file</th><th>error</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    if report.warnings:
        rows = "".join(
            f"<tr><td>{_link(w.path, [])}</td><td>{html.escape(w.message)}</td></tr>" for w in report.warnings
        )
        parts.append(
            '<table class="cm-table"><caption>warnings</caption>'
            f"<thead><tr><th>file</th><th>warning</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts)
