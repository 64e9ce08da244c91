"""Indexes written by earlier releases open, search the same and take updates.

The index is built by the code of an earlier revision, taken from git
(``git archive``) and run in a subprocess, then opened by the code under
test. Skipped where the checkout has no git history (an sdist, a shallow
clone without that commit).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer

ROOT = Path(__file__).resolve().parent.parent
#: The last revision before the package was split into engine/, remote/,
#: search.py (single-file engine.py and remote.py; index format 1).
LEGACY_REV = "e764fcf"
QUERIES = ["penguin quartz rhubarb", "meteor glacier harbour", "aardvark bicycle"]


def _legacy_source(dest: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to take the earlier revision from")
    probe = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{LEGACY_REV}^{{commit}}"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"revision {LEGACY_REV} is not in this clone")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", LEGACY_REV, "src/colbert_modal"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


@pytest.mark.slow
def test_index_built_before_the_redesign_opens_searches_and_updates(
    tmp_path: Path, colbert_checkpoint: Path, corpus_dir: Path
) -> None:
    old_src = _legacy_source(tmp_path / "legacy")
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(corpus_dir / "atlas.pdf", docs)
    shutil.copy(corpus_dir / "bestiary.pdf", docs)
    shutil.copytree(corpus_dir / "notes", docs / "notes")
    root = tmp_path / "indexes"
    script = textwrap.dedent(
        f"""
        import json, colbert_modal
        assert colbert_modal.__file__.startswith({str(old_src)!r}), colbert_modal.__file__
        from colbert_modal import ColbertIndexer
        idx = ColbertIndexer("legacy", model={str(colbert_checkpoint)!r}, index_root={str(root)!r}, progress=False)
        idx.index([{str(docs)!r}])
        hits = idx.search_batch({QUERIES!r}, k=3)
        print(json.dumps([[(h.chunk_id, round(h.score, 4)) for h in q] for q in hits]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(old_src), "HF_HUB_OFFLINE": "1", "GIT_PYTHON_REFRESH": "quiet"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    legacy_hits = json.loads(out.stdout.strip().splitlines()[-1])

    idx = ColbertIndexer("legacy", index_root=root, progress=False)  # model and settings from the index
    info = idx.info()
    assert info.generation == 1 and info.documents == 4 and info.model == str(colbert_checkpoint)
    hits = idx.search_batch(QUERIES, k=3)
    assert [[(h.chunk_id, round(h.score, 4)) for h in q] for q in hits] == [[tuple(x) for x in q] for q in legacy_hits]

    (docs / "notes" / "new.txt").write_text("Alphabet nonsense, printed in a font.\n", encoding="utf-8")
    report = idx.index([docs])
    assert report.indexed == [str(docs / "notes" / "new.txt")] and report.chunks_written == 1
    assert len(report.unchanged) == 4
    assert idx.search("alphabet nonsense font", k=1)[0].source == str(docs / "notes" / "new.txt")
    assert idx.info().generation == 2
