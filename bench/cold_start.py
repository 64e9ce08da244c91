"""How long a user waits for ``colbert-modal search`` in a new process, next to ``import torch``.

    python bench/cold_start.py [--model tiny|base] [--runs 5]

Builds (once, cached) a small exact index of a few example PDFs with a
checkpoint written by ``colbert_modal.testing`` (no download), then runs, in
turn and ``--runs`` times each: ``python -c "import torch"`` and
``colbert-modal search "..." --name N`` in fresh processes of this venv. It
prints each wall time, the medians and their ratio (the target of issue 22:
search <= 2x import torch), and which heavy modules a search process imported
(none of ragatouille, langchain, colbert on the lean path). Run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import CACHE, REPO, env

PDFS = [REPO / "examples" / "pdfs" / n for n in ("pdflatex-4-pages.pdf", "multicolumn.pdf", "minimal-document.pdf")]
SIZES = {
    "tiny": {},
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, lexical=False),
}


def prepare(model: str) -> tuple[Path, Path]:
    """The checkpoint and the index root, built once under the bench cache."""
    from colbert_modal import ColbertIndexer
    from colbert_modal.testing import write_tiny_checkpoint

    base = CACHE / "cold-start" / model
    ckpt, root = base / "ckpt", base / "root"
    if not (ckpt / "artifact.metadata").is_file():
        write_tiny_checkpoint(ckpt, **SIZES[model])  # type: ignore[arg-type]
    idx = ColbertIndexer("cold", model=ckpt, index_root=root, backend="exact", progress=False)
    if not idx.store.exists():
        idx.index(PDFS)
    return ckpt, root


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env(), capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    _, root = prepare(a.model)
    cli = str(Path(sys.executable).parent / "colbert-modal")
    search = [cli, "search", "document font letters", "--name", "cold", "--index-root", str(root), "-k", "3"]
    torch_only = [sys.executable, "-c", "import torch"]
    timed(search)  # warm the file cache (and compile nothing: exact search needs no extension)
    torch_s, search_s = [], []
    for _ in range(a.runs):
        torch_s.append(timed(torch_only))
        search_s.append(timed(search))
    probe = (
        "import sys\n"
        "from colbert_modal.cli import main\n"
        f"try:\n    main({search[1:]!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('ragatouille', 'langchain', 'langchain_core', 'colbert', 'transformers') "
        "if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env(), capture_output=True, text=True).stdout
    heavy = next((line for line in out.splitlines() if line.startswith("HEAVY")), "HEAVY ?")
    t, s = statistics.median(torch_s), statistics.median(search_s)
    print(f"model {a.model}; runs {a.runs}")
    print("import torch (s):   " + ", ".join(f"{x:.2f}" for x in torch_s))
    print("colbert-modal search (s): " + ", ".join(f"{x:.2f}" for x in search_s))
    print(f"median import torch {t:.2f} s, median search {s:.2f} s, ratio {s / t:.2f}x")
    print(f"heavy modules in a search process: {heavy[6:]}")


if __name__ == "__main__":
    main()
