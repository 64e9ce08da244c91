"""The ``colbert-modal`` CLI, driven through click's CliRunner on the real engine.

One index of a small corpus is built once for the module (through the CLI's
own ``index`` command); the delete test builds a second, two-file index.
"""

from __future__ import annotations

import doctest
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner, Result

from colbert_modal import cli as cli_module
from colbert_modal import cli_options
from colbert_modal.cli import cli, format_pages, make_snippet, parse_passwords

PDFS = Path(__file__).parent / "data" / "pdfs"
ENCRYPTED = "encrypted-libreoffice-writer-password.pdf"  # password: openpassword
UNKNOWN_PASSWORD = "encrypted-password-example.pdf"


def invoke(args: list[str], code: int = 0, **kwargs) -> Result:
    """Run the CLI; fail with the real traceback if it crashed instead of exiting."""
    result = CliRunner().invoke(cli, [str(a) for a in args], **kwargs)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# --- no engine needed -------------------------------------------------------------


def test_every_command_has_help() -> None:
    """sqlite-utils style: every command documents itself."""
    assert cli.commands, "no commands registered"
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), f"{name} has no help text"
        assert command.get_short_help_str().strip(), name
        result = invoke([name, "--help"])
        assert result.output.startswith("Usage: ")
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.opts} has no help text"
    result = invoke(["--help"])
    assert "Exit codes:" in result.output
    assert set(cli.commands) >= {"index", "search", "list", "info", "delete", "pull", "push", "deploy"}


def test_version() -> None:
    from colbert_modal import __version__

    assert __version__ in invoke(["--version"]).output


def test_doctests() -> None:
    assert doctest.testmod(cli_module).failed == 0
    options = doctest.testmod(cli_options)  # the option parsers, moved out of cli.py
    assert options.failed == 0 and options.attempted >= 6


def test_parse_passwords() -> None:
    assert parse_passwords([]) is None
    assert parse_passwords(["pw=with=equals"]) == "pw=with=equals"
    mapping = parse_passwords(["docs/a.pdf=one", "B.PDF=two"])
    assert mapping[str(Path("docs/a.pdf").absolute())] == "one"
    assert mapping["/elsewhere/B.PDF"] == "two"
    assert "/elsewhere/c.pdf" not in mapping
    both = parse_passwords(["a.pdf=one", "common"])
    assert both["/x/a.pdf"] == "one"
    assert both["/x/c.pdf"] == "common"
    with pytest.raises(click.UsageError):
        parse_passwords(["one", "two"])


def test_snippet_and_pages() -> None:
    text = "lorem " * 100 + "the Kangaroo jumped" + " ipsum" * 100
    snippet = make_snippet(text, "kangaroo", width=80, highlight=lambda w: f"*{w}*")
    assert "*Kangaroo*" in snippet
    assert snippet.startswith("... ") and snippet.endswith(" ...")
    assert len(snippet) <= 80 + 8
    assert make_snippet("no match here", "zebra") == "no match here"
    assert format_pages([3]) == "p. 3"
    assert format_pages([2, 1]) == "pp. 1-2"
    assert format_pages([]) == ""


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = invoke(["search", "kangaroo"], code=2)  # --name missing
    assert "Missing option" in result.output
    assert_one_line_error(invoke(["info", "../escape", "--index-root", tmp_path], code=2), "invalid index name")
    assert_one_line_error(invoke(["search", "x", "--name", "bad name", "--index-root", tmp_path], code=2))
    result = invoke(["index", tmp_path, "--name", "x", "--password", "a", "--password", "b"], code=2)
    assert "at most one --password" in result.output
    deep = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError, not ValueError
    result = invoke(["search", "x", "--name", "x", "--index-root", tmp_path, "--where-json", deep], code=2)
    assert "not JSON" in result.output and len(result.output) < 1000
    assert_one_line_error(invoke(["search", "x", "--name", "x", "--index-root", tmp_path, "--where", "a=" + deep],
                                 code=3))  # a plain string value then: no such index


def test_unknown_index_is_one_line_exit_3(tmp_path: Path) -> None:
    for args in (
        ["search", "kangaroo", "--name", "nope"],
        ["info", "nope"],
        ["delete", "nope", "--yes"],
        ["delete", "nope", "some.pdf"],
    ):
        result = invoke([*args, "--index-root", tmp_path], code=3)
        assert_one_line_error(result, "no index named 'nope'", "colbert-modal index")


def test_list_empty_uses_env_root(tmp_path: Path) -> None:
    result = invoke(["list"])
    assert result.stdout == ""
    assert str(tmp_path / "default-index-root") in result.stderr  # conftest's COLBERT_MODAL_INDEX_ROOT
    assert json.loads(invoke(["list", "--json"]).stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        ["search", "kangaroo", "--name", "docs", "--remote"],
        ["info", "docs", "--remote"],
        ["index", "{path}", "--name", "docs", "--remote"],
        ["delete", "docs", "{path}", "--remote"],
        ["pull", "docs"],
        ["push", "docs"],
        ["deploy"],
    ],
    ids=lambda a: "-".join(x for x in a if not x.startswith(("{", "--name"))),
)
def test_remote_without_credentials_is_one_line_exit_6(args: list[str], tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("a walrus\n", encoding="utf-8")
    started = time.monotonic()
    result = invoke([a.replace("{path}", str(note)) for a in args], code=6)
    assert time.monotonic() - started < 30
    assert_one_line_error(result)
    assert "modal" in result.stderr.lower()


# --- the real engine, one index per module ---------------------------------------


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path, corpus_dir: Path) -> SimpleNamespace:
    """A small corpus indexed by ``colbert-modal index``: one chunk per PDF page.

    The chunk settings are not the defaults, so that re-indexing without them
    shows that the CLI keeps the index's own.
    """
    docs = tmp_path_factory.mktemp("cli-corpus") / "docs"
    docs.mkdir()
    for name in ("atlas.pdf", "bestiary.pdf", "images-only-imagemagick.pdf"):
        shutil.copy(corpus_dir / name, docs / name)
    shutil.copytree(corpus_dir / "notes", docs / "notes")
    for name in (ENCRYPTED, UNKNOWN_PASSWORD):
        shutil.copy(PDFS / name, docs / name)
    root = tmp_path_factory.mktemp("cli-root")
    with pytest.MonkeyPatch.context() as mp:  # the autouse isolation is per test
        for key in list(os.environ):
            if key.startswith(("COLBERT_MODAL_", "MODAL_")):
                mp.delenv(key)
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = CliRunner().invoke(
            cli,
            ["index", str(docs), "--name", "docs", "--model", str(colbert_checkpoint),
             "--max-tokens", "240", "--overlap", "0", "--index-root", str(root),
             "--password", f"{ENCRYPTED}=openpassword"],
        )  # fmt: skip
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(root=root, docs=docs, result=result, checkpoint=colbert_checkpoint)


@pytest.mark.slow
def test_index_prints_summary(cli_index: SimpleNamespace) -> None:
    result, docs = cli_index.result, cli_index.docs
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("Indexed 6 files into 'docs' (")
    assert "0 unchanged, 0 removed, 1 skipped." in out
    skipped = [line for line in out.splitlines() if line.startswith("Skipped ")]
    assert skipped == [
        f"Skipped {docs / UNKNOWN_PASSWORD}: encrypted PDF; pass its password (--password FILE.pdf=PW) [EncryptedPDFError]"
    ]
    assert f"Warning {docs / 'images-only-imagemagick.pdf'}: no text layer" in out
    assert "Chunks: " in out and " in the index (6 files)." in out
    assert out.rstrip().splitlines()[-1].startswith("Done in ")
    assert result.stderr == ""  # no progress bars when stderr is not a terminal


@pytest.mark.slow
def test_reindex_is_incremental_and_keeps_chunk_settings(cli_index: SimpleNamespace) -> None:
    # No --max-tokens/--overlap: the index's own settings (240/0) are used, not the defaults.
    result = invoke(
        ["index", cli_index.docs, "--name", "docs", "--index-root", cli_index.root, "--json",
         "--password", f"{ENCRYPTED}=openpassword"]
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["indexed"] == []
    assert len(report["unchanged"]) == 6
    assert report["chunks_written"] == 0
    assert report["skipped"][0]["error"] == "EncryptedPDFError"


@pytest.mark.slow
def test_settings_mismatch_is_usage_error(cli_index: SimpleNamespace) -> None:
    result = invoke(
        ["index", cli_index.docs, "--name", "docs", "--index-root", cli_index.root, "--max-tokens", "64"], code=2
    )
    assert_one_line_error(result, "other settings", "--rebuild")


@pytest.mark.slow
def test_sharded_index_from_the_cli(cli_index: SimpleNamespace, tmp_path: Path) -> None:
    root = tmp_path / "sharded"
    base = ["--name", "sh", "--index-root", root]
    invoke(["index", cli_index.docs / "notes", cli_index.docs / "atlas.pdf", *base, "--model", cli_index.checkpoint,
            "--shards", "2"])
    info = invoke(["info", "sh", "--index-root", root]).stdout
    line = next(x for x in info.splitlines() if x.startswith("shards:"))
    assert line.startswith("shards:     2 (s000: ") and "s001: " in line
    assert json.loads(invoke(["info", "sh", "--index-root", root, "--json"]).stdout)["shards"] == 2
    assert "p. 2" in invoke(["search", "flamingo glacier", *base, "-k", "1"]).stdout
    assert_one_line_error(invoke(["index", cli_index.docs / "notes", *base, "--shards", "3"], code=2),
                          "shards: index has 2, asked for 3", "--rebuild")
    assert "Missing" not in invoke(["index", cli_index.docs / "notes", *base, "--shards", "0"], code=2).output


@pytest.mark.slow
def test_search_text(cli_index: SimpleNamespace) -> None:
    result = invoke(["search", "kangaroo lantern", "--name", "docs", "--index-root", cli_index.root, "-k", "3"])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("1. atlas.pdf  p. 3  score ")
    assert lines[1].startswith("   kangaroo lantern meteor nebula origami. ")
    assert lines[1].endswith(" ...") and len(lines[1]) < 220
    assert sum(line[:1].isdigit() for line in lines) == 3
    assert "\x1b[" not in result.stdout  # no colour when not a terminal


@pytest.mark.slow
def test_search_color_and_verbose_path(cli_index: SimpleNamespace) -> None:
    result = invoke(
        ["-v", "search", "zeppelin", "--name", "docs", "--index-root", cli_index.root, "-k", "1"], color=True
    )
    out = result.stdout
    assert click.style("zeppelin", bold=True) in out
    assert click.style("bestiary.pdf", bold=True) in out
    assert str(cli_index.docs / "bestiary.pdf") in out  # -v shows the full path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "file", "pages"),
    [("kangaroo", "atlas.pdf", [3]), ("aardvark bicycle", "atlas.pdf", [1]), ("zeppelin", "bestiary.pdf", [2])],
)
def test_search_json(cli_index: SimpleNamespace, query: str, file: str, pages: list[int]) -> None:
    result = invoke(["search", query, "--name", "docs", "--index-root", cli_index.root, "-k", "2", "--json"])
    hits = json.loads(result.stdout)
    assert len(hits) == 2
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["source"] == str(cli_index.docs / file)
    assert hits[0]["pages"] == pages
    assert hits[0]["score"] >= hits[1]["score"]
    assert set(hits[0]) >= {"text", "chunk_id", "document_id", "metadata"}


@pytest.mark.slow
def test_search_empty_query_is_usage_error(cli_index: SimpleNamespace) -> None:
    assert_one_line_error(invoke(["search", " ", "--name", "docs", "--index-root", cli_index.root], code=2))


@pytest.mark.slow
def test_list_and_info(cli_index: SimpleNamespace) -> None:
    root = cli_index.root
    lines = invoke(["list", "--index-root", root]).stdout.splitlines()
    assert lines[0].split() == ["NAME", "FILES", "CHUNKS", "UPDATED", "MODEL"]
    assert lines[1].split()[:2] == ["docs", "6"]
    listed = json.loads(invoke(["list", "--index-root", root, "--json"]).stdout)
    assert [i["name"] for i in listed] == ["docs"]

    data = json.loads(invoke(["info", "docs", "--index-root", root, "--json"]).stdout)
    assert data["documents"] == 6
    assert (data["max_tokens"], data["overlap"]) == (240, 0)
    assert data["model"] == str(cli_index.checkpoint)
    assert str(cli_index.docs / ENCRYPTED) in data["sources"]  # opened with --password
    assert str(cli_index.docs / UNKNOWN_PASSWORD) not in data["sources"]
    text = invoke(["info", "docs", "--index-root", root]).stdout
    assert "name:       docs" in text
    assert "chunking:   240 tokens, overlap 0" in text
    assert f"  {cli_index.docs / 'atlas.pdf'}" in text


@pytest.mark.slow
def test_delete_files_then_whole_index(colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(corpus_dir / "atlas.pdf", docs / "atlas.pdf")
    shutil.copy(corpus_dir / "notes" / "plain.txt", docs / "plain.txt")
    root = ["--index-root", tmp_path / "root"]
    invoke(["index", docs, "--name", "scratch", "--model", colbert_checkpoint, "--max-tokens", "240", "--overlap", "0", *root])

    # Only some files: the index keeps the rest (and its own chunk settings).
    result = invoke(["delete", "scratch", docs / "atlas.pdf", docs / "missing.pdf", *root])
    assert result.stdout.startswith("Removed 1 file from 'scratch'; 1 file and ")
    assert f"Not in the index: {docs / 'missing.pdf'}" in result.stdout
    data = json.loads(invoke(["info", "scratch", "--json", *root]).stdout)
    assert data["sources"] == [str(docs / "plain.txt")]
    hits = json.loads(invoke(["search", "kangaroo", "--name", "scratch", "--json", *root]).stdout)
    assert all(h["source"] == str(docs / "plain.txt") for h in hits)

    # The whole index: asks first; "n" keeps it.
    result = invoke(["delete", "scratch", *root], code=1, input="n\n")
    assert "Delete index 'scratch'" in result.stderr and "Aborted" in result.stderr
    invoke(["info", "scratch", *root])
    result = invoke(["delete", "scratch", "--yes", *root])
    assert "Deleted index 'scratch'" in result.stdout
    assert_one_line_error(invoke(["info", "scratch", *root], code=3), "no index named 'scratch'")
    assert json.loads(invoke(["list", "--json", *root]).stdout) == []


@pytest.mark.slow
def test_nothing_to_index_exits_4(colbert_checkpoint: Path, tmp_path: Path) -> None:
    root = ["--index-root", tmp_path / "root"]
    # Nothing indexable: skip reasons on stderr, then the error, exit 4; no index is created.
    result = invoke(["index", tmp_path / "absent", "--name", "empty", "--model", colbert_checkpoint, *root], code=4)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[0].startswith(f"Skipped {tmp_path / 'absent'}: ")
    assert result.stderr.splitlines()[-1].startswith("Error: nothing to index for 'empty'")
    assert json.loads(invoke(["list", "--json", *root]).stdout) == []


def test_verbose_shows_library_logs_for_that_command_only(tmp_path: Path) -> None:
    import logging

    (tmp_path / "zero.pdf").write_bytes(b"")  # the loader logs the skip at INFO
    args = ["index", tmp_path / "zero.pdf", "--name", "empty", "--index-root", tmp_path / "root"]
    verbose = invoke(["-v", *args], code=4)
    assert "INFO colbert_modal." in verbose.stderr
    quiet = invoke(args, code=4)
    assert "INFO" not in quiet.stderr
    library_logger = logging.getLogger("colbert_modal")
    assert library_logger.handlers == [] and library_logger.level == logging.NOTSET


@pytest.mark.parametrize(("args", "module"), [([], "colbert_modal.modal_app"), (["--web"], "colbert_modal.modal_web")])
def test_deploy_runs_modal_deploy_of_the_app_or_the_app_with_its_web_endpoint(
    args: list[str], module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import colbert_modal.cli as cli_module

    ran: list[list[str]] = []
    monkeypatch.setattr(cli_module, "_require_modal_credentials", lambda: None)
    monkeypatch.setattr(cli_module.subprocess, "call", lambda command: ran.append(command) or 0)
    invoke(["deploy", *args])
    (command,) = ran
    assert command[1:] == ["-m", "modal", "deploy", "-m", module]
