"""Planning an update (loading and chunking in this process) when files are odd, change, go, or are huge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colbert_modal import ColbertIndexer, pipeline
from colbert_modal.records import Document
from helpers import change_after_reading


@pytest.fixture
def changing_files(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Files named ``grow*``/``gone*`` change/vanish just after this process's loader has read them
    (while the list returned holds True)."""
    real = pipeline.iter_documents
    active = [True]

    def reading_then_changing(files: Any, **kwargs: Any) -> Iterator[Any]:
        for item in real(files, **kwargs):
            if isinstance(item, Document) and active[0]:  # read: it changes before the planner gets it
                change_after_reading(Path(item.source))
            yield item

    monkeypatch.setattr(pipeline, "iter_documents", reading_then_changing)
    return active


def indexer(checkpoint: Path, root: Path) -> ColbertIndexer:
    return ColbertIndexer("plan", model=checkpoint, index_root=root, progress=False)


def test_a_checkpoint_whose_tokenizer_file_truncates_still_indexes_every_word(colbert_checkpoint: Path, tmp_path: Path) -> None:
    # the test checkpoint's tokenizer.json truncates and pads at 128 tokens, as sentence-transformers saves do
    assert json.loads((colbert_checkpoint / "tokenizer.json").read_text())["truncation"]["max_length"] == 128
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text(" ".join(["the walrus and the penguin"] * 200) + " zeppelin.\n", encoding="utf-8")
    (docs / "other.txt").write_text("A glacier.\n", encoding="utf-8")
    idx = indexer(colbert_checkpoint, tmp_path / "indexes")
    report = idx.index([docs])
    assert report.chunks_total > 4  # 1,001 tokens at 256 a chunk, not one chunk of the first 128
    hit = idx.search("zeppelin", k=1)[0]
    assert Path(hit.source).name == "long.txt" and "zeppelin" in hit.text


def test_a_file_appended_to_while_it_loads_is_read_again_next_time(
    colbert_checkpoint: Path, tmp_path: Path, changing_files: list[bool]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "grow.txt").write_text("A walrus on the glacier.\n", encoding="utf-8")
    (docs / "stays.txt").write_text("A penguin in the harbour.\n", encoding="utf-8")
    idx = indexer(colbert_checkpoint, tmp_path / "indexes")
    first = idx.index([docs])
    assert [Path(w.path).name for w in first.warnings if "changed while it was being read" in w.message] == ["grow.txt"]
    assert "zeppelin" in (docs / "grow.txt").read_text()  # appended after it was read
    changing_files[0] = False

    second = idx.index([docs])
    assert [Path(p).name for p in second.indexed] == ["grow.txt"]
    hit = idx.search("zeppelin", k=1)[0]
    assert Path(hit.source).name == "grow.txt" and "zeppelin" in hit.text
    assert idx.index([docs]).indexed == []  # and then it is settled


def test_a_file_deleted_while_the_batch_loads_is_skipped_with_the_reason(
    colbert_checkpoint: Path, tmp_path: Path, changing_files: list[bool]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "gone.txt").write_text("A walrus on the glacier.\n", encoding="utf-8")
    (docs / "stays.txt").write_text("A penguin in the harbour.\n", encoding="utf-8")
    report = indexer(colbert_checkpoint, tmp_path / "indexes").index([docs])
    assert [(Path(s.path).name, s.error) for s in report.skipped] == [("gone.txt", "FileAccessError")]
    assert "deleted or moved while the batch was loading" in report.skipped[0].reason
    assert [Path(p).name for p in report.indexed] == ["stays.txt"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_fifo_at_an_indexed_path_is_skipped_not_waited_on(colbert_checkpoint: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("pipe.txt", "stays.txt"):
        (docs / name).write_text(f"A walrus in {name}.\n", encoding="utf-8")
    idx = indexer(colbert_checkpoint, tmp_path / "indexes")
    idx.index([docs])
    (docs / "pipe.txt").unlink()
    os.mkfifo(docs / "pipe.txt")  # nobody ever writes to it

    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(idx.index([docs])), daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # release it (it waits for a writer) before failing
        fd = os.open(docs / "pipe.txt", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=60)
        pytest.fail("index() blocked on a named pipe")
    (report,) = out
    skipped = {Path(s.path).name: s for s in report.skipped}
    assert skipped["pipe.txt"].error == "FileAccessError"
    assert "not a regular file (a named pipe (FIFO))" in skipped["pipe.txt"].reason


def test_a_huge_text_file_over_the_chunk_cap_is_skipped_in_bounded_memory(colbert_checkpoint: Path, tmp_path: Path) -> None:
    # in a fresh interpreter, so that its peak RSS is this planning's alone
    mib = 24
    docs = tmp_path / "docs"
    docs.mkdir()
    line = "the walrus and the penguin share an umbrella in the harbour, by the glacier.\n"
    (docs / "huge.txt").write_text(line * ((mib << 20) // len(line)), encoding="utf-8")
    (docs / "small.txt").write_text("A zeppelin.\n", encoding="utf-8")
    code = textwrap.dedent(f"""
        import resource
        from colbert_modal.chunking import Chunker, load_tokenizer
        from colbert_modal.pipeline import Settings, plan_update
        ck = {str(colbert_checkpoint)!r}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        plan = plan_update([{str(docs)!r}], name="huge", settings=Settings(ck, 256, 38), manifest=None, workers=1,
                           chunker=lambda: Chunker(load_tokenizer(ck), max_tokens=256), max_chunks_per_file=20)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grew // 1024, [(s.path.rsplit("/", 1)[-1], s.error) for s in plan.skipped], len(plan.new_files))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    grew_mib, rest = done.stdout.split(" ", 1)
    assert rest.strip() == "[('huge.txt', 'TooManyChunks')] 1"
    assert int(grew_mib) < 4 * mib, f"peak RSS grew by {grew_mib} MiB for a {mib} MiB file"


def test_a_chunker_whose_chunks_the_encoder_would_cut_is_refused(colbert_checkpoint: Path, tmp_path: Path) -> None:
    from colbert_modal.chunking import Chunker, load_tokenizer
    from colbert_modal.errors import ConfigurationError

    (tmp_path / "long.txt").write_text("the walrus and the penguin " * 40, encoding="utf-8")
    wider = Chunker(load_tokenizer(colbert_checkpoint), max_tokens=64, overlap=0)  # the index keeps 16 a chunk
    with pytest.raises(ConfigurationError, match="a chunk of 64 tokens, over the index's max_tokens=16"):
        pipeline.plan_update([tmp_path], name="p", settings=pipeline.Settings(str(colbert_checkpoint), 16, 0),
                             manifest=None, chunker=wider)
