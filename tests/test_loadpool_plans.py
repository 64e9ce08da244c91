"""Loading and chunking in loader processes gives the plan that one process gives.

Each call that uses loader processes starts them (about a second each here),
so the corpora stay small and ``PARALLEL_MIN_FILES`` is lowered for them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from colbert_modal import ColbertIndexer, loaders, loadpool
from colbert_modal.chunking import Chunker, load_tokenizer
from colbert_modal.errors import ConfigurationError
from colbert_modal.pipeline import Settings, UpdatePlan, plan_update
from colbert_modal.progress import Event, Progress, StageAdvanced
from conftest import PDFS
from helpers import make_text_pdf, read_or_die, read_then_change

ENCRYPTED = "encrypted-libreoffice-writer-password.pdf"


@pytest.fixture
def few_files_suffice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadpool, "PARALLEL_MIN_FILES", 2)


def mixed_folder(folder: Path) -> Path:
    """Real PDFs, an encrypted one, broken ones, a duplicate, text and markdown."""
    folder.mkdir(parents=True)
    for name in ("minimal-document.pdf", "pdflatex-4-pages.pdf", "multicolumn.pdf", "images-only-imagemagick.pdf",
                 "malformed-issue-932.pdf", ENCRYPTED, "encrypted-password-example.pdf"):
        shutil.copy(PDFS / name, folder / name)
    shutil.copy(PDFS / "minimal-document.pdf", folder / "minimal-copy.pdf")  # same content: DuplicateFile
    whole = (PDFS / "pdflatex-4-pages.pdf").read_bytes()
    (folder / "truncated.pdf").write_bytes(whole[: len(whole) // 3])
    make_text_pdf(folder / "generated.pdf", ["walrus penguin umbrella", "glacier harbour"])
    (folder / "notes").mkdir()
    (folder / "notes" / "meteor.md").write_text("# Notes\n\nThe meteor shower over the glacier.\n", encoding="utf-8")
    (folder / "notes" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me, a walrus.\n".encode("latin-1"))
    (folder / "notes" / "blank.txt").write_text("   \n", encoding="utf-8")
    return folder


def plan_of(folder: Path, checkpoint: Path, *, workers: int, progress: Progress, **kwargs: Any) -> UpdatePlan:
    settings = Settings(str(checkpoint), 32, 4)
    return plan_update(
        [folder], name="p", settings=settings, manifest=None, workers=workers, progress=progress,
        chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=settings.max_tokens, overlap=settings.overlap),
        **kwargs,
    )


def comparable(plan: UpdatePlan) -> dict[str, Any]:
    return {
        "new_files": plan.new_files,
        "new_chunks": [c.model_dump() for c in plan.new_chunks],
        "skipped": plan.skipped,
        "warnings": plan.warnings,
        "unchanged": plan.unchanged,
        "metadata": plan.metadata,
        "remove": plan.remove,
    }


@pytest.mark.parametrize("with_password", [True, False], ids=["password", "no-password"])
def test_two_loader_processes_give_the_in_process_plan(
    colbert_checkpoint: Path, tmp_path: Path, few_files_suffice: None, with_password: bool
) -> None:
    folder = mixed_folder(tmp_path / "docs")
    kwargs: dict[str, Any] = {
        # a callable does not pickle: metadata must be resolved in this process
        "metadata": lambda p: {"group": "notes" if p.parent.name == "notes" else "pdfs"},
        "max_chunks_per_file": 100,  # over it: multicolumn.pdf, pdflatex-4-pages.pdf (TooManyChunks)
        "passwords": {ENCRYPTED: "openpassword"} if with_password else None,
    }
    alone, pooled = Progress(False), Progress(False)
    one = plan_of(folder, colbert_checkpoint, workers=1, progress=alone, **kwargs)
    two = plan_of(folder, colbert_checkpoint, workers=2, progress=pooled, **kwargs)

    assert "chunking" in alone.done and "chunking" not in pooled.done  # the second plan did use loader processes
    assert comparable(two) == comparable(one)
    errors = {Path(s.path).name: s.error for s in one.skipped}
    assert errors["minimal-document.pdf"] == "DuplicateFile"  # of minimal-copy.pdf, read first
    assert errors["truncated.pdf"] == "CorruptFileError"
    assert errors["encrypted-password-example.pdf"] == "EncryptedPDFError"
    assert errors["multicolumn.pdf"] == errors["pdflatex-4-pages.pdf"] == "TooManyChunks"
    assert (ENCRYPTED in errors) is not with_password
    loaded = {Path(p).name for p in one.new_files}
    assert {"generated.pdf", "meteor.md", "latin1.txt", "minimal-copy.pdf", "malformed-issue-932.pdf"} <= loaded
    assert (ENCRYPTED in loaded) is with_password
    assert any("no text layer" in w.message for w in one.warnings)
    assert all(c.metadata["group"] in ("notes", "pdfs") for c in two.new_chunks)


def test_a_file_that_kills_its_loader_process_is_skipped_and_the_rest_indexed(
    colbert_checkpoint: Path, tmp_path: Path, few_files_suffice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loadpool, "READER", read_or_die)  # imported by name in each loader process
    monkeypatch.setenv("COLBERT_MODAL_LOAD_WORKERS", "2")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, word in enumerate(["walrus", "penguin", "glacier", "meteor", "harbour"]):
        (docs / f"{i}-{word}.txt").write_text(f"A note about the {word}.\n", encoding="utf-8")
    (docs / "die-exit.txt").write_text("the process exits while reading this\n", encoding="utf-8")
    (docs / "die-kill.txt").write_text("the process is killed while reading this\n", encoding="utf-8")

    indexer = ColbertIndexer("crashy", model=colbert_checkpoint, index_root=tmp_path / "indexes", progress=False)
    report = indexer.index([docs])

    skipped = {Path(s.path).name: s for s in report.skipped}
    assert set(skipped) == {"die-exit.txt", "die-kill.txt"}
    assert skipped["die-exit.txt"].error == "LoaderCrashed" and "exit code 3" in skipped["die-exit.txt"].reason
    assert "SIGKILL" in skipped["die-kill.txt"].reason
    assert sorted(Path(p).name for p in report.indexed) == [
        "0-walrus.txt", "1-penguin.txt", "2-glacier.txt", "3-meteor.txt", "4-harbour.txt"
    ]
    assert Path(indexer.search("penguin", k=1)[0].source).name == "1-penguin.txt"


def test_env_var_one_keeps_loading_in_this_process(
    colbert_checkpoint: Path, tmp_path: Path, few_files_suffice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_MODAL_LOAD_WORKERS", "1")
    read_here: list[str] = []
    real = loaders.load_file

    def recording(path: Any, **kw: Any) -> Any:
        read_here.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(loaders, "load_file", recording)  # seen only by loads in this process
    docs = tmp_path / "docs"
    docs.mkdir()
    names = [f"{i}.txt" for i in range(4)]
    for name in names:
        (docs / name).write_text(f"note {name}\n", encoding="utf-8")
    progress = Progress(False)
    settings = Settings(str(colbert_checkpoint), 32, 4)
    plan = plan_update(
        [docs], name="p", settings=settings, manifest=None, progress=progress,
        chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=32, overlap=4),
    )
    assert sorted(read_here) == names
    assert "chunking" in progress.done and len(plan.new_files) == 4


def test_ctrl_c_ends_the_loader_processes(
    colbert_checkpoint: Path, tmp_path: Path, few_files_suffice: None
) -> None:
    def loaders_running() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if "loadpool import serve" in " ".join(p.cmdline())]

    folder = mixed_folder(tmp_path / "docs")
    seen: list[int] = []

    def interrupt(event: Event) -> None:
        if isinstance(event, StageAdvanced) and event.stage == "loading":
            seen.extend(p.pid for p in loaders_running())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        plan_of(folder, colbert_checkpoint, workers=2, progress=Progress(False, sink=interrupt))
    assert len(seen) == 2  # they were running when Ctrl-C came
    assert loaders_running() == []


def test_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadpool, "usable_cores", lambda: 8)
    assert loadpool.worker_count(loadpool.PARALLEL_MIN_FILES - 1) == 1  # a small batch: no processes
    assert loadpool.worker_count(100) == 8
    assert loadpool.worker_count(20, requested=50) == 20  # never more than files
    monkeypatch.setenv("COLBERT_MODAL_LOAD_WORKERS", "3")
    assert loadpool.worker_count(100) == 3
    assert loadpool.worker_count(100, requested=1) == 1  # the argument wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("COLBERT_MODAL_LOAD_WORKERS", bad)
        with pytest.raises(ConfigurationError, match="COLBERT_MODAL_LOAD_WORKERS"):
            loadpool.worker_count(100)


def test_a_script_without_a_main_guard_can_use_loader_processes(colbert_checkpoint: Path, tmp_path: Path) -> None:
    # multiprocessing's spawn and forkserver re-run such a script in every worker; ours never import __main__
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.md").write_text(f"# Note {i}\n\nA walrus.\n", encoding="utf-8")
    script = tmp_path / "plain_script.py"
    script.write_text(textwrap.dedent(f"""
        from colbert_modal import loadpool
        from colbert_modal.chunking import Chunker, load_tokenizer
        from colbert_modal.pipeline import Settings, plan_update
        from colbert_modal.progress import Event, StageAdvanced, Progress

        loadpool.PARALLEL_MIN_FILES = 2
        progress = Progress(False)
        plan = plan_update([{str(docs)!r}], name="s", settings=Settings({str(colbert_checkpoint)!r}, 32, 4),
                           manifest=None, workers=2, progress=progress,
                           chunker=lambda: Chunker(load_tokenizer({str(colbert_checkpoint)!r}), max_tokens=32, overlap=4))
        print("files", len(plan.new_files), "pooled", "chunking" not in progress.done)
    """), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["files", "3", "pooled", "True"]


def test_files_that_change_or_go_while_loader_processes_read_them(
    colbert_checkpoint: Path, tmp_path: Path, few_files_suffice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loadpool, "READER", read_then_change)  # imported by name in each loader process
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("grow.txt", "gone.txt", "stays.txt"):
        (docs / name).write_text(f"A walrus note in {name}.\n", encoding="utf-8")
    size_before = (docs / "grow.txt").stat().st_size
    plan = plan_of(docs, colbert_checkpoint, workers=2, progress=Progress(False))

    assert [(Path(s.path).name, s.error) for s in plan.skipped] == [("gone.txt", "FileAccessError")]
    assert "deleted or moved while the batch was loading" in plan.skipped[0].reason
    grown = plan.new_files[str(docs / "grow.txt")]
    assert grown.size == size_before < (docs / "grow.txt").stat().st_size  # the size it had when it was read
    assert [Path(w.path).name for w in plan.warnings if "changed while it was being read" in w.message] == ["grow.txt"]
    assert sorted(Path(p).name for p in plan.new_files) == ["grow.txt", "stays.txt"]
