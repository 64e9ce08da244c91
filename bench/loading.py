"""Loading and chunking a big folder: one process vs loader processes (``plan_update(workers=...)``).

    nice -n 5 .venv/bin/python bench/loading.py [--copies 40] [--workers 1 2] [--rounds 2] [--exclude NAME ...]

Builds a temporary folder of ``--copies`` copies of the real sample PDFs
(``GOOD_PDFS`` of ``_common.py`` but ``--exclude``; each copy made distinct
by a trailing PDF comment, so that none is skipped as a duplicate), then
plans the same first-time update with each worker count, ``--rounds``
times, alternating. Prints wall time and CPU time (this process, plus the
loader processes).
The tokenizer is the ``real`` benchmark checkpoint's (BERT's uncased
WordPiece vocabulary) where it exists, else the tiny one's; chunks of 256
tokens, overlap 38. Checks that every plan equals the first one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, checkpoint, pick_pdfs


def make_folder(root: Path, copies: int, exclude: list[str]) -> list[Path]:
    files = []
    sources = [p for p in pick_pdfs(None) if p.name not in exclude]
    for i in range(copies):
        sub = root / f"copy-{i:03d}"
        sub.mkdir(parents=True)
        for src in sources:
            dst = sub / src.name
            dst.write_bytes(src.read_bytes() + f"\n% copy {i}\n".encode())
            files.append(dst)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--exclude", nargs="*", default=["GeoTopo-komprimiert.pdf"],
                    help="sample PDFs to leave out (default: the 117-page one, 8 s of CPU per copy)")
    args = ap.parse_args()

    from colbert_modal.chunking import Chunker, load_tokenizer
    from colbert_modal.loadpool import usable_cores
    from colbert_modal.pipeline import Settings, plan_update

    real = CACHE / "ckpt-real"
    model = str(real if (real / "tokenizer.json").exists() else checkpoint("tiny"))
    settings = Settings(model, 256, 38)
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        files = make_folder(Path(tmp), args.copies, args.exclude)
        size = sum(f.stat().st_size for f in files)
        print(f"{len(files)} PDFs, {size / 2**20:.1f} MiB, tokenizer {Path(model).name}, "
              f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        cpu: dict[int, list[float]] = {w: [] for w in args.workers}
        reference = None
        for rnd in range(args.rounds):
            for w in args.workers:
                r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                plan = plan_update(
                    [tmp], name="bench", settings=settings, manifest=None, workers=w,
                    chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=256, overlap=38),
                )
                wall = time.perf_counter() - t0
                r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                here = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
                loaders = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime  # the loader processes, once reaped
                times[w].append(wall)
                cpu[w].append(here + loaders)
                shape = ([c.model_dump() for c in plan.new_chunks], plan.skipped, plan.warnings)
                if reference is None:
                    reference = shape
                same = shape == reference
                print(f"round {rnd + 1}, workers={w}: {wall:6.1f} s wall, CPU {here:.1f} s here + {loaders:.1f} s "
                      f"in loaders, {len(plan.new_files)} files, "
                      f"{len(plan.new_chunks)} chunks, {len(plan.skipped)} skipped, same plan: {same}, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
                if not same:
                    raise SystemExit("the plans differ")
        base = statistics.median(times[args.workers[0]])
        for w in args.workers:
            med = statistics.median(times[w])
            print(f"workers={w}: median {med:.1f} s wall, {len(files) / med:.1f} files/s, x{base / med:.2f}; "
                  f"CPU median {statistics.median(cpu[w]):.1f} s")


if __name__ == "__main__":
    main()
