"""Embedding safety (issue 14): readers during writes, kill -9 trials, a full disk.

    nice -n 10 .venv/bin/python bench/embed_safety.py                 # all three, tiny model
    nice -n 10 .venv/bin/python bench/embed_safety.py --only readers --updates 100
    nice -n 10 .venv/bin/python bench/embed_safety.py --only kills --trials 25
    sudo .venv/bin/python bench/embed_safety.py --only disk           # needs mount (tmpfs)

Run it alone (timings). Parts:

readers
    3 threads in this process and 2 child processes search the index while
    this process publishes ``--updates`` updates (each adds one note and
    changes another). Every hit must be a chunk of a published generation
    (ids collected from each published manifest); errors are counted. Search
    latency p50/p99 is measured idle (before the writes) and during them.
kills
    ``--trials`` child processes each run one update and are killed (SIGKILL)
    at a random moment; one trial in five is killed between the rename of the
    new generation and the ``CURRENT`` write (the child pauses there). After
    each kill the index must open and search, and the next update must leave
    no build, no unpublished generation and no temporary file behind.
disk
    A 24 MiB tmpfs as the index root (skipped where mounting is not allowed):
    updates until the disk is full must end in ``IndexStorageError`` ("free
    space") with the previous generation intact; after space is freed the
    next update succeeds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

WORDS = ("aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine kangaroo lantern "
         "meteor nebula origami penguin quartz rhubarb saffron tornado umbrella volcano walrus zeppelin").split()
QUERIES = ["dolphin glacier", "penguin quartz", "meteor over the harbour", "walrus umbrella", "origami lantern"]


def _note(i: int) -> str:
    rnd = random.Random(i)
    return " ".join(rnd.choice(WORDS) for _ in range(60)) + f" note{i}.\n"


def _setup(base: Path, n: int = 40) -> tuple[Path, Path, Path]:
    from colbert_modal import ColbertIndexer
    from colbert_modal.testing import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(base / "ckpt", extra_words=WORDS)
    docs = base / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"note{i:04d}.txt").write_text(_note(i), encoding="utf-8")
    root = base / "root"
    ColbertIndexer("bench", model=ckpt, index_root=root, progress=False).index([docs])
    return ckpt, docs, root


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


# --- readers during writes ---------------------------------------------------------------


def _reader_process(root: str, stop_file: str, out: str) -> None:
    from colbert_modal import ColbertIndexer

    idx = ColbertIndexer("bench", index_root=root, progress=False)
    lat: list[float] = []
    ids: set[str] = set()
    errors: list[str] = []
    idx.search(QUERIES[0], k=5)  # warm-up: model load and index open, not timed
    Path(out + ".ready").write_text("ready", encoding="utf-8")
    i = 0
    while not os.path.exists(stop_file):
        t = time.perf_counter()
        try:
            ids.update(h.chunk_id for h in idx.search(QUERIES[i % len(QUERIES)], k=5))
            lat.append(time.perf_counter() - t)
        except Exception as exc:  # counted
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1
    Path(out).write_text(json.dumps({"lat": lat, "ids": sorted(ids), "errors": errors}), encoding="utf-8")


def readers(base: Path, updates: int) -> dict[str, Any]:
    from colbert_modal import ColbertIndexer
    from colbert_modal.store import IndexStore

    ckpt, docs, root = _setup(base)
    store = IndexStore(root, "bench")
    published: set[str] = {c.id for c in store.current().chunks()}
    idx = ColbertIndexer("bench", index_root=root, progress=False)
    idle: list[float] = []
    for i in range(60):
        t = time.perf_counter()
        idx.search(QUERIES[i % len(QUERIES)], k=5)
        idle.append(time.perf_counter() - t)

    stop = threading.Event()
    lat: list[float] = []
    seen: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def reader(n: int) -> None:
        mine = ColbertIndexer("bench", index_root=root, progress=False)
        i = n
        while not stop.is_set():
            t = time.perf_counter()
            try:
                hits = mine.search(QUERIES[i % len(QUERIES)], k=5)
                with lock:
                    lat.append(time.perf_counter() - t)
                    seen.update(h.chunk_id for h in hits)
            except Exception as exc:  # counted
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            i += 1

    stop_file = base / "stop"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_reader_process, args=(str(root), str(stop_file), str(base / f"proc{j}.json")))
             for j in range(2)]
    for p in procs:
        p.start()
    while not all((base / f"proc{j}.json.ready").exists() for j in range(2)):  # models loaded
        time.sleep(0.2)
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    writer = ColbertIndexer("bench", model=ckpt, index_root=root, progress=False, lock_timeout=60)
    t0 = time.perf_counter()
    for u in range(updates):
        (docs / f"new{u:04d}.txt").write_text(_note(10_000 + u), encoding="utf-8")
        (docs / f"note{u % 40:04d}.txt").write_text(_note(20_000 + u), encoding="utf-8")
        writer.index([docs])
        published.update(c.id for c in store.current().chunks())
    write_s = time.perf_counter() - t0
    stop.set()
    stop_file.write_text("stop")
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
    proc_lat: list[float] = []
    for j in range(2):
        data = json.loads((base / f"proc{j}.json").read_text(encoding="utf-8"))
        proc_lat += data["lat"]
        seen.update(data["ids"])
        errors += data["errors"]
    return {
        "updates": updates,
        "write_seconds": round(write_s, 1),
        "searches": len(lat) + len(proc_lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "hits_not_from_a_published_generation": len(seen - published),
        "idle_p50_ms": round(_pct(idle, 0.5), 1),
        "idle_p99_ms": round(_pct(idle, 0.99), 1),
        "threads_during_writes_p50_ms": round(_pct(lat, 0.5), 1),
        "threads_during_writes_p99_ms": round(_pct(lat, 0.99), 1),
        "processes_during_writes_p50_ms": round(_pct(proc_lat, 0.5), 1),
        "processes_during_writes_p99_ms": round(_pct(proc_lat, 0.99), 1),
    }


# --- kill -9 trials -----------------------------------------------------------------------

_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[5])
from colbert_modal import ColbertIndexer
import colbert_modal.store as store
if sys.argv[4] == "gap":  # pause between the rename of the generation and the CURRENT write
    real = store._write_text_atomic
    def paused(path, text):
        if path.name == "CURRENT":
            open(sys.argv[3], "w").close()
            time.sleep(60)
        real(path, text)
    store._write_text_atomic = paused
from colbert_modal.engine import get_engine
get_engine(sys.argv[1]).checkpoint  # the model is loaded before the marker: kills land in the update
idx = ColbertIndexer("bench", model=sys.argv[1], index_root=sys.argv[2], progress=False)
if sys.argv[4] != "gap":
    open(sys.argv[3], "w").close()
idx.index([sys.argv[6]])
"""


def _leftovers(root: Path) -> list[str]:
    path = root / "bench"
    current = (path / "CURRENT").read_text(encoding="utf-8").strip()
    gens = sorted(p.name for p in (path / "generations").iterdir())
    extra = [g for g in gens if g.startswith(".") or g > current]
    extra += [p.name for p in path.glob(".*.tmp")]
    if len([g for g in gens if not g.startswith(".")]) > 2:
        extra.append(f"{len(gens)} generations")
    return extra


def kills(base: Path, trials: int) -> dict[str, Any]:
    from colbert_modal import ColbertIndexer

    ckpt, docs, root = _setup(base)
    rnd = random.Random(14)
    t = time.perf_counter()  # how long one update of this kind takes, model loaded
    (docs / "probe.txt").write_text(_note(29_999), encoding="utf-8")
    ColbertIndexer("bench", index_root=root, progress=False).index([docs])
    args_update_seconds = (time.perf_counter() - t) * 1.5
    results = {"trials": trials, "opened_and_searched": 0, "clean_after_next_update": 0, "gap_trials": 0,
               "left_before_cleanup": 0, "failures": []}
    for trial in range(trials):
        gap = trial % 5 == 4
        (docs / f"kill{trial:03d}.txt").write_text(_note(30_000 + trial), encoding="utf-8")
        marker = base / f"marker{trial}"
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(ckpt), str(root), str(marker),
                                 "gap" if gap else "any", str(REPO / "src"), str(docs)])
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.01)
        if not gap:
            time.sleep(rnd.uniform(0.0, args_update_seconds))  # somewhere in the update
        else:
            results["gap_trials"] += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results["left_before_cleanup"] += bool(_leftovers(root))
        try:
            hits = ColbertIndexer("bench", index_root=root, progress=False).search("dolphin glacier", k=3)
            assert hits
            results["opened_and_searched"] += 1
            ColbertIndexer("bench", index_root=root, progress=False).index([docs])
            left = _leftovers(root)
            if left:
                results["failures"].append(f"trial {trial}: left {left}")
            else:
                results["clean_after_next_update"] += 1
        except Exception as exc:  # counted
            results["failures"].append(f"trial {trial}: {type(exc).__name__}: {exc}")
        print(f"trial {trial + 1}/{trials}: {results['opened_and_searched']} opened, "
              f"{results['clean_after_next_update']} clean", flush=True)
    results["update_seconds"] = round(args_update_seconds / 1.5, 2)
    return results


# --- a full disk ---------------------------------------------------------------------------


def disk(base: Path) -> dict[str, Any]:
    from colbert_modal import ColbertIndexer, IndexStorageError

    mnt = base / "tmpfs"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if ok.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here ({ok.stderr.strip() or ok.returncode})"}
    try:
        ckpt, docs, _ = _setup(base, n=5)
        root = mnt / "root"
        idx = ColbertIndexer("bench", model=ckpt, index_root=root, progress=False)
        idx.index([docs])
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # leave less room than one more generation needs
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
            except OSError:
                pass
        before = idx.info().generation
        (docs / "more.txt").write_text(_note(99) * 200, encoding="utf-8")
        out: dict[str, Any] = {}
        try:
            idx.index([docs])
            out["full_disk_error"] = None
        except IndexStorageError as exc:
            out["full_disk_error"] = str(exc)
        except Exception as exc:  # a raw error would be the bug
            out["full_disk_error"] = f"NOT A LIBRARY ERROR: {type(exc).__name__}: {exc}"
        out["previous_intact"] = idx.info().generation == before and bool(idx.search("dolphin"))
        out["generations_left"] = sorted(p.name for p in (root / "bench" / "generations").iterdir())
        filler.unlink()
        out["next_update_after_freeing"] = idx.index([docs]).changed
        return out
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["readers", "kills", "disk"], action="append")
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--trials", type=int, default=25)
    args = ap.parse_args()
    parts = args.only or ["readers", "kills", "disk"]
    for part in parts:
        with tempfile.TemporaryDirectory(prefix=f"embed-safety-{part}-") as tmp:
            t = time.perf_counter()
            if part == "readers":
                res = readers(Path(tmp), args.updates)
            elif part == "kills":
                res = kills(Path(tmp), args.trials)
            else:
                res = disk(Path(tmp))
            res["seconds"] = round(time.perf_counter() - t, 1)
            print(part, json.dumps(res, indent=1), flush=True)
    shutil.rmtree(Path(tempfile.gettempdir()) / "colbert-modal-scratch", ignore_errors=True)


if __name__ == "__main__":
    main()
