"""``colbert-modal``: a thin click layer over :class:`~colbert_modal.ColbertIndexer`.

Every command builds a :class:`ColbertIndexer`, calls one of its methods and
renders the result: readable text for a terminal, ``--json`` (the pydantic
models' ``model_dump``) for scripts. Library errors
(:class:`~colbert_modal.ColbertModalError`) become a one-line ``Error: ...``
on stderr and an exit code that says what kind of failure it was; see
``EXIT_CODES``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__, reranking
from .chunking import DEFAULT_MAX_TOKENS
from .cli_options import parse_meta_options, parse_passwords, parse_where_options
from .display import format_pages, make_snippet, query_terms
from .errors import (
    ColbertModalError,
    ConfigurationError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStorageError,
    NoDocumentsError,
    RemoteError,
    RemoteUnavailableError,
)
from .indexer import ColbertIndexer
from .pipeline import MAX_CHUNKS_PER_FILE
from .progress import should_show
from .records import IndexInfo, IndexReport, SearchResult, SkippedFile
from .store import default_index_root, list_indexes

__all__ = ["EXIT_CODES", "cli", "format_pages", "main", "make_snippet", "parse_passwords", "query_terms"]

#: Exit status of each kind of failure (most specific class first).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NO_DOCUMENTS = 4
EXIT_LOCKED = 5
EXIT_REMOTE = 6

EXIT_CODES: list[tuple[type[ColbertModalError], int]] = [
    (IndexNotFoundError, EXIT_NOT_FOUND),
    (ConfigurationError, EXIT_USAGE),
    (NoDocumentsError, EXIT_NO_DOCUMENTS),
    (IndexLockedError, EXIT_LOCKED),
    (RemoteError, EXIT_REMOTE),
]

EPILOG = """\b
Exit codes:
  0  success
  1  error (engine, model, storage, Ctrl-C, ...)
  2  usage: bad option, argument, index name or setting
  3  no index of that name
  4  nothing could be indexed (every file skipped)
  5  the index is being written by another process
  6  Modal: no credentials, app not deployed, remote failure
"""

SUB_EPILOG = "Exit codes: see `colbert-modal --help`."

logger = logging.getLogger("colbert_modal")


# --- errors -------------------------------------------------------------------


class CliError(click.ClickException):
    """A library error as a one-line ``Error: ...`` and its exit code."""

    def __init__(self, exc: ColbertModalError) -> None:
        message = _cli_words(str(exc)) or type(exc).__name__
        if isinstance(exc, IndexNotFoundError):
            message = message.replace("index() first", "`colbert-modal index` first")
        super().__init__(message)
        self.exit_code = exit_code_for(exc)  # type: ignore[misc]  # click declares it on the class


def exit_code_for(exc: BaseException) -> int:
    """The exit status the CLI uses for ``exc``."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


class _Group(click.Group):
    """Turns library errors raised by any subcommand into :class:`CliError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ColbertModalError as exc:
            raise CliError(exc) from exc
        except KeyboardInterrupt:
            error = click.ClickException(
                "interrupted (Ctrl-C); the index is intact: an interrupted update publishes nothing, "
                "the previous version stays searchable"
            )
            raise error from None


# --- logging and options ------------------------------------------------------


class _ClickHandler(logging.Handler):
    """Log records to whatever stderr is now (CliRunner swaps it per call)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(ctx: click.Context, verbose: int) -> None:
    """Send the library's log records to stderr for this command only."""
    handler = _ClickHandler(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    if verbose > 0:
        logger.setLevel(handler.level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

    ctx.call_on_close(restore)


@dataclass
class _State:
    verbose: int = 0


def _state() -> _State:
    ctx = click.get_current_context()
    obj = ctx.find_object(_State)
    return obj if obj is not None else _State()


def _progress() -> bool:
    """Progress bars only when a person watches stderr (never piped, never in CI)."""
    return should_show(None, sys.stderr)


def _indexer(name: str, *, index_root: Path | None, remote: bool = False, **kwargs: Any) -> ColbertIndexer:
    return ColbertIndexer(
        name,
        index_root=index_root,
        mode="remote" if remote else "local",
        progress=_progress(),
        verbose=_state().verbose >= 2,
        **kwargs,
    )


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _cli_words(text: str) -> str:
    """The library's Python-API hints, in CLI words."""
    return " ".join(text.split()).replace("passwords={'<file>': '...'}", "--password FILE.pdf=PW")


def _shown(text: str) -> str:
    r"""``text`` (a file name) on one line: control characters escaped.

    >>> _shown("two\nlines.txt")
    'two\\nlines.txt'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


def _skip_line(skipped: SkippedFile) -> str:
    return f"Skipped {_shown(skipped.path)}: {_cli_words(skipped.reason)} [{skipped.error}]"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def index_root_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--index-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder that holds the indexes. Default: $COLBERT_MODAL_INDEX_ROOT, "
        "else a per-user data folder.",
    )(fn)


def remote_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--remote", is_flag=True, help="Run on Modal (index on a Modal Volume) instead of in this process."
    )(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


# --- the commands -------------------------------------------------------------


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="colbert-modal")
@click.option("-v", "--verbose", count=True, help="Show what the library logs (-vv: debug, and the engine's own output).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """ColBERT search over your own PDFs and notes, in-process or on Modal GPUs.

    \b
    Index a folder, then search it:
      colbert-modal index ./papers --name papers
      colbert-modal search "late interaction retrieval" --name papers

    Indexes live under --index-root (default $COLBERT_MODAL_INDEX_ROOT, else a
    per-user data folder). Add --remote to build and search on Modal instead
    (run `colbert-modal deploy` once first).
    """
    ctx.obj = _State(verbose=verbose)
    if os.environ.get("NO_COLOR"):
        ctx.color = False
    _setup_logging(ctx, verbose)


@cli.command(epilog=SUB_EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-n", "--name", required=True, help="Name of the index (letters, digits, '-', '_').")
@click.option("--model", help="Hugging Face model id or local checkpoint folder. Default: the index's model, "
              "else $COLBERT_MODAL_MODEL, else colbert-ir/colbertv2.0.")
@click.option("--max-tokens", type=int, default=None,
              help=f"Chunk size in model tokens (8-508). Default: the index's, else {DEFAULT_MAX_TOKENS}.")
@click.option("--overlap", type=int, default=None, help="Tokens shared by neighbouring chunks. Default: 15% of --max-tokens.")
@click.option("--password", "passwords", multiple=True, metavar="[FILE.pdf=]PW",
              help="Password of encrypted PDFs: FILE.pdf=PW for one file (path or name), "
              "or PW for all others. Repeatable.")
@click.option("--rebuild", is_flag=True, help="Re-index every file, e.g. after changing --model or --max-tokens.")
@click.option("--keep-missing", is_flag=True, help="Keep the chunks of indexed files that no longer exist.")
@click.option("--meta", "metas", multiple=True, metavar="FILE:KEY=VALUE",
              help="Metadata of a file (path, file name or glob), searchable with --where; VALUE parses as "
              "JSON where it can. Repeatable.")
@click.option("--meta-json", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A JSON file: an object from path or glob to a metadata object.")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks in the folders that lead outside them, and symlinked folders "
              "(default: skip and report them).")
@click.option("--max-chunks-per-file", type=click.IntRange(min=1), default=MAX_CHUNKS_PER_FILE, show_default=True,
              help="Skip (and report) a file that would make more chunks than this.")
@click.option("--ocr", type=click.Choice(["auto", "off", "force"]), default="auto", show_default=True,
              help="OCR of PDF pages without a text layer (scans): auto (needs the ocr extra), off, or every page.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Split a new index (or one rebuilt with --rebuild) into this many shards, by file; built in "
              "parallel with --remote. Default: the index's own count, else one per 50,000 chunks.")
@index_root_option
@remote_option
@json_option
def index(
    paths: tuple[Path, ...],
    name: str,
    model: str | None,
    max_tokens: int | None,
    overlap: int | None,
    passwords: tuple[str, ...],
    rebuild: bool,
    keep_missing: bool,
    metas: tuple[str, ...],
    meta_json: Path | None,
    follow_symlinks: bool,
    max_chunks_per_file: int,
    ocr: str,
    shards: int | None,
    index_root: Path | None,
    remote: bool,
    as_json: bool,
) -> None:
    """Index PDFs, text and Markdown files (folders recursively).

    Re-running on the same paths indexes only new and changed files, and
    drops files that are gone (unless --keep-missing). Files that cannot be
    read are skipped with the reason; the rest is indexed.
    """
    password_arg = parse_passwords(passwords)
    metadata = parse_meta_options(metas, meta_json)
    indexer = _indexer(name, index_root=index_root, remote=remote, model=model, max_tokens=max_tokens, overlap=overlap,
                       shards=shards)
    started = time.perf_counter()
    try:
        report = indexer.index(
            [os.fspath(p) for p in paths], passwords=password_arg, rebuild=rebuild, keep_missing=keep_missing,
            metadata=metadata,
            follow_symlinks=follow_symlinks, max_chunks_per_file=max_chunks_per_file, ocr=ocr,  # type: ignore[arg-type]
        )
    except NoDocumentsError as exc:
        if isinstance(exc.report, IndexReport):
            if as_json:
                _echo_json(exc.report.model_dump(mode="json"))
            else:
                for skipped in exc.report.skipped:
                    click.echo(_skip_line(skipped), err=True)
        raise
    finally:
        indexer.close()
    if as_json:
        _echo_json(report.model_dump(mode="json"))
        return
    _print_report(report, where=str(indexer.store.path) if not remote else "Modal", seconds=time.perf_counter() - started)


@cli.command("index-texts", epilog=SUB_EPILOG)
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option("-n", "--name", required=True, help="Name of the index (letters, digits, '-', '_').")
@click.option("--model", help="Hugging Face model id or local checkpoint folder (a new index). Default: the index's "
              "model, else $COLBERT_MODAL_MODEL, else colbert-ir/colbertv2.0.")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Shards of a new index (see index --shards).")
@index_root_option
@remote_option
@json_option
def index_texts(source: Any, name: str, model: str | None, shards: int | None, index_root: Path | None, remote: bool,
                as_json: bool) -> None:
    """Index texts from a JSON Lines file (SOURCE; '-' reads stdin).

    Each line is a record, {"id": ..., "text": ..., "metadata": {...}}, or a
    plain JSON string (its id: the first 16 hex digits of its SHA-256).
    Records are incremental by id; hits show the id as their source.
    """
    from .cli_options import read_jsonl_records

    records = read_jsonl_records(source, source.name)
    started = time.perf_counter()
    with _indexer(name, index_root=index_root, remote=remote, model=model, shards=shards) as indexer:
        report = indexer.index_texts(records)
    if as_json:
        _echo_json(report.model_dump(mode="json"))
        return
    where = str(indexer.store.path) if not remote else "Modal"
    click.echo(f"Indexed {_plural(len(report.indexed), 'record')} into {name!r} ({where}): "
               f"{len(report.unchanged)} unchanged, {_plural(len(report.metadata_updated), 'metadata update')}, "
               f"{len(report.skipped)} skipped.")
    for skipped in report.skipped:
        click.echo(_skip_line(skipped))
    click.echo(f"Chunks: {report.chunks_written} written, {report.chunks_total} in the index. "
               f"Done in {time.perf_counter() - started:.1f} s.")


def _print_report(report: IndexReport, *, where: str, seconds: float, verb: str = "Indexed") -> None:
    verbose = _state().verbose
    click.echo(
        f"{verb} {_plural(len(report.indexed), 'file')} into {report.index_name!r} ({where}): "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, {len(report.skipped)} skipped."
    )
    if report.metadata_updated:
        click.echo(f"Metadata updated: {_plural(len(report.metadata_updated), 'file')} (nothing re-encoded).")
    if verbose:
        for path in report.indexed:
            click.echo(f"Indexed {_shown(path)}")
    for path in report.removed:
        click.echo(f"Removed {_shown(path)}")
    for skipped in report.skipped:
        click.echo(_skip_line(skipped))
    for warning in report.warnings:
        click.echo(f"Warning {_shown(warning.path)}: {warning.message}")
    click.echo(
        f"Chunks: {report.chunks_written} written, {report.chunks_total} in the index "
        f"({_plural(report.documents_total, 'file')})."
    )
    click.echo(f"Done in {seconds:.1f} s.")


@cli.command(epilog=SUB_EPILOG)
@click.argument("query")
@click.option("-n", "--name", required=True, help="Name of the index to search.")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many passages to return.")
@click.option("--width", type=click.IntRange(min=40), default=200, show_default=True,
              help="Characters of each passage to show (text output).")
@click.option("--where", "wheres", multiple=True, metavar="FIELD[=|!=|>|>=|<|<=|~]VALUE",
              help="Search only chunks where this holds, e.g. year=2023, 'page>=10', 'source~reports/*.pdf'; "
              "VALUE parses as JSON where it can (a list: any of). Repeatable (all must hold).")
@click.option("--where-json", default=None, metavar="JSON",
              help='The filter as a JSON object, e.g. \'{"year": {"$gte": 2020}}\'.')
@click.option("--open", "open_best", is_flag=True,
              help="Open the best hit's file in your viewer (PDFs at the hit's page where the viewer allows).")
@click.option("--mode", type=click.Choice(["colbert", "hybrid", "keyword"]), default=None,
              help="How to rank: ColBERT alone (default), BM25 keywords alone, or both fused (exact identifiers).")
@click.option("--hybrid", is_flag=True, help="Shorthand for --mode hybrid.")
@click.option("--keyword-weight", type=float, default=1.0, show_default=True,
              help="Hybrid mode: the keyword ranking's weight in the fusion (ColBERT's is 1).")
@index_root_option
@remote_option
@json_option
def search(
    query: str, name: str, k: int, width: int, wheres: tuple[str, ...], where_json: str | None,
    open_best: bool, mode: str | None, hybrid: bool, keyword_weight: float, index_root: Path | None, remote: bool,
    as_json: bool,
) -> None:
    """Search an index: the best passages for QUERY, best first.

    Prints rank, score, file, page(s) and a snippet around the first query
    word (query words in bold on a terminal; -v adds the full path). --json
    prints the full results.
    """
    where = parse_where_options(wheres, where_json)
    if hybrid and mode not in (None, "hybrid"):
        raise click.UsageError(f"--hybrid and --mode {mode} disagree; give one of them")
    how: dict[str, Any] = {"mode": "hybrid" if hybrid else mode or "colbert", "keyword_weight": keyword_weight}
    with _indexer(name, index_root=index_root, remote=remote) as indexer:
        results = indexer.search(query, k=k, where=where, **how)
    if open_best and results and not results[0].pages and not os.path.isfile(results[0].source):
        raise click.UsageError(f"--open: the best hit is text record {results[0].source!r}, not a file")
    if open_best and results:
        from .view import open_file

        opened = open_file(results[0].source, results[0].page)
        click.echo(f"Opened {opened}", err=True)
    if as_json:
        _echo_json([r.model_dump(mode="json") for r in results])
        return
    if not results:
        click.echo("No results.", err=True)
        return
    verbose = _state().verbose
    for i, result in enumerate(results):
        if i:
            click.echo()
        _print_result(result, query, width=width, full_path=verbose > 0)


def _print_result(result: SearchResult, query: str, *, width: int, full_path: bool) -> None:
    pages = format_pages(result.pages)
    head = f"{result.rank}. {click.style(_shown(Path(result.source).name), bold=True)}"
    if pages:
        head += f"  {pages}"
    head += click.style(f"  score {result.score:.2f}", dim=True)
    click.echo(head)
    if full_path:
        click.echo("   " + click.style(_shown(result.source), dim=True))
    snippet = make_snippet(result.text, query, width=width, highlight=lambda w: click.style(w, bold=True))
    click.echo("   " + snippet)


@cli.command("rerank", epilog=SUB_EPILOG)
@click.argument("query")
@click.argument("texts", nargs=-1)
@click.option("-n", "--name", required=True, help="The index whose model scores the texts (it is not searched).")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=None, help="Keep the best k (default: all).")
@index_root_option
@remote_option
@json_option
def rerank_(query: str, texts: tuple[str, ...], name: str, k: int | None, as_json: bool, **opts: Any) -> None:
    """Score TEXTS for QUERY with index NAME's model, best first: each a file's text, a text, or a .jsonl of them."""
    click.echo(reranking.cli_rerank(_indexer(name, **opts), query, texts, k, as_json=as_json))  # opts: root, remote


@cli.command("list", epilog=SUB_EPILOG)
@index_root_option
@json_option
def list_(index_root: Path | None, as_json: bool) -> None:
    """List the indexes under the index root, with their size and model."""
    root = (index_root.expanduser().absolute() if index_root is not None else default_index_root())
    infos: list[IndexInfo] = []
    for name in list_indexes(root):
        try:
            infos.append(ColbertIndexer(name, index_root=root).info.local())
        except ColbertModalError as exc:
            click.echo(f"Warning {name}: {' '.join(str(exc).split())}", err=True)
    if as_json:
        _echo_json([i.model_dump(mode="json") for i in infos])
        return
    if not infos:
        click.echo(f"No indexes under {root}.", err=True)
        return
    rows = [("NAME", "FILES", "CHUNKS", "UPDATED", "MODEL")] + [
        (i.name, str(i.documents), str(i.chunks), i.updated_at, i.model) for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        click.echo(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip()
        )


@cli.command(epilog=SUB_EPILOG)
@click.argument("name")
@index_root_option
@remote_option
@json_option
def info(name: str, index_root: Path | None, remote: bool, as_json: bool) -> None:
    """Show what index NAME holds and how it was built."""
    with _indexer(name, index_root=index_root, remote=remote) as indexer:
        data = indexer.info()
    if as_json:
        _echo_json(data.model_dump(mode="json"))
        return
    rows = [
        ("name", data.name),
        ("path", data.path),
        ("model", data.model),
        ("chunking", f"{data.max_tokens} tokens, overlap {data.overlap}"),
        ("backend", data.backend),
        *([("shards", f"{data.shards} ({', '.join(f'{s}: {n}' for s, n in data.shard_chunks.items())} chunks)")]
          if data.shards > 1 else []),
        ("files", str(data.documents)),
        ("chunks", str(data.chunks)),
        ("generation", str(data.generation)),
        ("created", data.created_at),
        ("updated", data.updated_at),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':<12}{value}")
    if data.metadata_keys:
        click.echo("metadata:")
        for key, count in data.metadata_keys.items():
            click.echo(f"  {key} ({_plural(count, 'file')})")
    if data.sources:
        click.echo("sources:")
        for source in data.sources:
            click.echo(f"  {_shown(source)}")


@cli.command(epilog=SUB_EPILOG)
@click.argument("name")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting a whole index.")
@click.option("--text-id", "text_ids", multiple=True, metavar="ID",
              help="Delete the text record ID (see index-texts); repeat for several.")
@index_root_option
@remote_option
@json_option
def delete(
    name: str, paths: tuple[Path, ...], yes: bool, text_ids: tuple[str, ...], index_root: Path | None, remote: bool,
    as_json: bool,
) -> None:
    """Delete index NAME, or only the files PATHS (or text records) from it.

    \b
    colbert-modal delete papers              delete the whole index (asks first)
    colbert-modal delete papers old.pdf dir/ drop these files' chunks
    colbert-modal delete faq --text-id faq-13 drop a record given to index-texts
    """
    if text_ids and paths:
        raise click.UsageError("give either PATHS or --text-id, not both")
    if text_ids:
        with _indexer(name, index_root=index_root, remote=remote) as indexer:
            report = indexer.delete_texts(list(text_ids))
        if as_json:
            _echo_json(report.model_dump(mode="json"))
            return
        click.echo(f"Removed {_plural(len(report.removed), 'record')} from {name!r}; "
                   f"{_plural(report.chunks_total, 'chunk')} left.")
        for skipped in report.skipped:
            click.echo(f"Not in the index: {skipped.path}")
        return
    if not paths:
        if remote:
            raise click.UsageError("--remote deletes files from an index; give the PATHS to delete")
        indexer = _indexer(name, index_root=index_root)
        try:
            data = indexer.info()  # IndexNotFoundError before asking
            what = f"({_plural(data.documents, 'file')}, {_plural(data.chunks, 'chunk')})"
        except IndexStorageError:  # a damaged index can still be deleted
            what = "(damaged)"
        where = str(indexer.store.path)
        if not yes:
            click.confirm(f"Delete index {name!r} at {where} {what}?", abort=True, err=True)
        indexer.drop()
        if as_json:
            _echo_json({"deleted": name, "path": where})
        else:
            click.echo(f"Deleted index {name!r} ({where}).")
        return
    started = time.perf_counter()
    with _indexer(name, index_root=index_root, remote=remote) as indexer:
        report = indexer.delete([os.fspath(p) for p in paths])
    if as_json:
        _echo_json(report.model_dump(mode="json"))
        return
    click.echo(
        f"Removed {_plural(len(report.removed), 'file')} from {name!r}; "
        f"{_plural(report.documents_total, 'file')} and {_plural(report.chunks_total, 'chunk')} left."
    )
    for path in report.removed:
        click.echo(f"Removed {_shown(path)}")
    for skipped in report.skipped:
        click.echo(f"Not in the index: {_shown(skipped.path)}")
    click.echo(f"Done in {time.perf_counter() - started:.1f} s.")


@cli.command(epilog=SUB_EPILOG)
@click.argument("name")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace a local index of the same name.")
@index_root_option
def pull(name: str, overwrite: bool, index_root: Path | None) -> None:
    """Copy index NAME from Modal to the index root (to search it locally)."""
    with _indexer(name, index_root=index_root, remote=True) as indexer:
        path = indexer.pull(overwrite=overwrite)
    click.echo(f"Pulled {name!r} to {path}.")


@cli.command(epilog=SUB_EPILOG)
@click.argument("name")
@index_root_option
def push(name: str, index_root: Path | None) -> None:
    """Copy the local index NAME to Modal (to search it with --remote)."""
    with _indexer(name, index_root=index_root, remote=True) as indexer:
        indexer.push()
    click.echo(f"Pushed {name!r} to Modal.")


MODAL_APP_MODULE = "colbert_modal.modal_app"


MODAL_WEB_MODULE = "colbert_modal.modal_web"


@cli.command(epilog=SUB_EPILOG)
@click.option("--web", is_flag=True,
              help="Also deploy the HTTP API and search page as the app's web endpoint (auth: $COLBERT_MODAL_WEB, "
                   "token by default, the token in the modal.Secret colbert-modal-web; needs the serve extra).")
def deploy(web: bool) -> None:
    """Deploy the Modal app that --remote, pull and push use.

    Runs `modal deploy -m colbert_modal.modal_app` (with --web,
    `colbert_modal.modal_web`: the same app plus its web endpoint; Modal's
    output prints the endpoint's URL). Needs Modal credentials (`modal
    setup`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET); set MODAL_ENVIRONMENT
    to deploy into another environment.
    """
    _require_modal_credentials()
    import importlib.util

    module = MODAL_WEB_MODULE if web else MODAL_APP_MODULE
    if importlib.util.find_spec(module) is None:
        raise RemoteUnavailableError(f"this installation has no Modal app ({module} is missing)")
    command = [sys.executable, "-m", "modal", "deploy", "-m", module]
    logger.info("running %s", " ".join(command))
    code = subprocess.call(command)
    if code:
        raise RemoteError(f"`modal deploy` failed with exit code {code} (see its output above)")


@cli.command(epilog=SUB_EPILOG)
@click.option("--remote", is_flag=True, help="Check remote mode (Modal) instead of local mode.")
@click.option("--build-image", is_flag=True,
              help="With --remote and no deployed app: start an ephemeral run, building the image if needed.")
@click.option("--model", default=None, help="Model for the tiny test index (default: as `index`).")
@index_root_option
def doctor(remote: bool, build_image: bool, model: str | None, index_root: Path | None) -> None:
    """Check each step a first run needs; say which one fails and what to do.

    \b
    colbert-modal doctor                  engine, index root, a tiny local index
    colbert-modal doctor --remote         credentials, reachability, deployed app,
                                          and (if deployed, or with --build-image)
                                          a tiny index + search + delete on Modal
    """
    from .doctor import check_local, check_remote

    if remote:
        steps = check_remote(model=model, build_image=build_image, on_step=_print_step)
    else:
        steps = check_local(index_root=index_root, model=model)
        for step in steps:
            _print_step(step)
    if any(s.ok is False for s in steps):
        failed = next(s for s in steps if s.ok is False)
        raise click.exceptions.Exit(EXIT_REMOTE if remote else EXIT_ERROR) from RuntimeError(failed.name)
    click.echo("All checks passed." if all(s.ok for s in steps) else "No failures; see the notes above.")


@cli.command(epilog=SUB_EPILOG)
@click.option("-n", "--name", "names", multiple=True,
              help="Serve this index (repeatable). Default: every index under the index root.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but 127.0.0.1, ::1, localhost needs a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--token", default=None, help="Bearer token clients must send. Default: $COLBERT_MODAL_TOKEN.")
@click.option("--allow-writes", is_flag=True, help="Expose indexing and deleting files over HTTP.")
@index_root_option
def serve(names: tuple[str, ...], host: str, port: int, token: str | None, allow_writes: bool,
          index_root: Path | None) -> None:
    """Serve indexes over HTTP: a JSON search API (the [serve] extra).

    \b
    colbert-modal serve --name papers
    curl -s localhost:8000/search -d '{"index": "papers", "query": "late interaction"}'
    """
    from .http import serve as run_server

    run_server(host, port, token=token, index_root=index_root, names=list(names) or None, allow_writes=allow_writes)


def _print_step(step: Any) -> None:
    mark = {True: click.style("ok  ", fg="green"), False: click.style("FAIL", fg="red"), None: "--  "}[step.ok]
    cost = f", ~${step.cost:.4f} GPU" if step.cost is not None else ""
    click.echo(f"{mark} {step.name:<22} {step.seconds:6.1f} s{cost}  {step.detail}")
    if step.ok is not True and step.fix and step.fix not in step.detail:
        click.echo(f"     -> {step.fix}")


def _require_modal_credentials() -> None:
    from .remote.connection import check_credentials

    check_credentials()


def main(args: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``colbert-modal`` script."""
    cli.main(args=list(args) if args is not None else None, prog_name="colbert-modal")
    raise SystemExit(EXIT_OK)  # pragma: no cover - cli.main always exits
