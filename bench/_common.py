"""Shared helpers of the benchmark scripts (not part of the library).

Every measured stage runs in its own child process (``python bench/<script>.py
--worker NAME ...``) so that peak RSS is per stage and no import or cache of
one pipeline helps another. The child prints one line ``BENCH_RESULT <json>``
last; the parent collects those and prints ratios.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARK = "BENCH_RESULT "
CACHE = Path(os.environ.get("COLBERT_BENCH_CACHE", Path.home() / ".cache" / "colbert_modal_bench"))

#: The PDFs with a text layer that every pipeline can read (encrypted and
#: malformed samples are left out: llama-index's reader stops on them).
GOOD_PDFS = [
    "federal-register-2020-17221.pdf",
    "GeoTopo-komprimiert.pdf",
    "multicolumn.pdf",
    "pdflatex-4-pages.pdf",
    "minimal-document.pdf",
    "scotus-transcript-p1.pdf",
    "google-doc-document.pdf",
    "lorem-ipsum.pdf",
]

MODELS = {
    # name: (write_tiny_checkpoint kwargs)
    "tiny": dict(lexical=True),
    "tiny-random": dict(lexical=False),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, lexical=False),
    # all-MiniLM-L6-v2's pretrained BERT + a seeded random orthogonal 384->128 head (bench/real_weights.py)
    "real": dict(writer="real_weights.write_real_checkpoint"),
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("GIT_PYTHON_REFRESH", "quiet")
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e["PYTHONPATH"] = str(REPO / "bench") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def checkpoint(model: str) -> Path:
    """The benchmark checkpoint ``model`` (written once, cached on disk)."""
    path = CACHE / f"ckpt-{model}"
    if not (path / "artifact.metadata").exists():
        run_worker(Path(__file__).with_name("_common.py"), "write_ckpt", {"model": model, "path": str(path)})
    return path


def pick_pdfs(folder: str | None) -> list[Path]:
    dirs = [Path(folder)] if folder else [Path("/work/shared/data/pdfs"), REPO / "tests" / "data" / "pdfs"]
    for d in dirs:
        if d.is_dir():
            found = [d / n for n in GOOD_PDFS if (d / n).exists()]
            if folder and not found:
                found = sorted(d.glob("*.pdf"))
            if found:
                return found
    raise SystemExit(f"no PDFs found in {dirs}")


#: Files read into the page cache before each worker starts (see :func:`prefetch`).
PREFETCH: list[Path] = []


def prefetch(paths: list[Path]) -> None:
    """Read ``paths`` (files, or folders' files) once, so that no stage pays for
    a cold page cache. On the shared development machine another job can evict
    a 440 MB checkpoint; one run lost ~35 s to re-reading it inside one stage."""
    for root in paths:
        files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file()]
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def run_worker(script: Path, name: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker name`` in a child process; its result dict, plus ``wall_s``."""
    prefetch(PREFETCH)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", name, "--args", json.dumps(args)],
        capture_output=True, text=True, env=env(), timeout=timeout, cwd=str(REPO),
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + "\n" + proc.stderr[-6000:] + "\n")
        raise SystemExit(f"worker {name} failed (rc={proc.returncode})")
    out = json.loads(lines[-1][len(MARK):])
    out["wall_s"] = wall
    return out


def emit(result: dict[str, Any]) -> None:
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write("\n" + MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def worker_main(workers: dict[str, Any]) -> bool:
    """If argv asks for a worker, run it and return True."""
    if "--worker" not in sys.argv:
        return False
    name = sys.argv[sys.argv.index("--worker") + 1]
    args = json.loads(sys.argv[sys.argv.index("--args") + 1])
    emit(workers[name](**args))
    return True


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


N_BATCH = 64


def measure_search(single: Callable[[str], list[int]], batch: Callable[[list[str]], list[list[int]]],
                   queries: list[str], n_warm: int) -> dict[str, Any]:
    """First call, warm p50/p95 over ``n_warm`` single calls, 64 single calls vs one batch of 64."""
    t0 = time.perf_counter()
    single(queries[0])
    first = time.perf_counter() - t0
    for q in queries[1:3]:
        single(q)
    lat = []
    for q in queries[:n_warm]:
        t0 = time.perf_counter()
        single(q)
        lat.append(time.perf_counter() - t0)
    qs = queries[:N_BATCH]
    t0 = time.perf_counter()
    for q in qs:
        single(q)
    singles = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranked = batch(qs)
    batched = time.perf_counter() - t0
    return {
        "first_search_s": first, "warm_p50_ms": 1000 * pct(lat, 0.5), "warm_p95_ms": 1000 * pct(lat, 0.95),
        "singles_64_s": singles, "batch_64_s": batched, "batch_speedup": singles / batched,
        "batch_qps": len(qs) / batched, "singles_qps": len(qs) / singles, "ranked": ranked,
    }


def make_queries(texts: list[str], tokenizer_dir: str, n: int, seed: int = 0, max_tokens: int = 24) -> list[str]:
    """``n`` short queries cut from the chunks (3-5 consecutive words, <= max_tokens tokens).

    Short enough that every system encodes them at ColBERT's default
    query_maxlen (32), so all rankings are of the same query embeddings.
    """
    from colbert_modal.chunking import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    rng = random.Random(seed)
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        words = [w for w in rng.choice(texts).split() if any(c.isalnum() for c in w)]
        if len(words) < 6:
            continue
        m = rng.randint(3, 5)
        start = rng.randrange(0, len(words) - m)
        q = " ".join(words[start : start + m])
        if len(tok.offsets(q)) <= max_tokens and q not in out:
            out.append(q)
    return out


def overlap_at_k(got: list[list[int]], ref: list[list[int]], k: int = 10) -> float:
    vals = [len(set(g[:k]) & set(r[:k])) / max(1, min(k, len(r))) for g, r in zip(got, ref)]
    return statistics.fmean(vals) if vals else float("nan")


# --- colbert-ai stage timers (for raw ragatouille and our PLAID backend) ----------


class StageTimer:
    """Monkeypatches colbert-ai's indexer so ``rag.index`` reports its stages."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {"encode_s": 0.0, "kmeans_s": 0.0, "compress_s": 0.0, "finalize_s": 0.0,
                                    "encode_calls": 0, "encoded_passages": 0}

    def install(self) -> StageTimer:
        from colbert.indexing import collection_indexer as ci
        from colbert.indexing.codecs import residual

        t = self.t
        self._undo: list[tuple[Any, str, Any]] = []

        def wrap(obj: Any, name: str, key: str, count: bool = False) -> None:
            orig = getattr(obj, name)

            def inner(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return orig(*a, **k)
                finally:
                    t[key] += time.perf_counter() - t0
                    if count:
                        t["encode_calls"] += 1
                        t["encoded_passages"] += len(a[1]) if len(a) > 1 else 0

            self._undo.append((obj, name, obj.__dict__[name]))
            setattr(obj, name, inner)

        wrap(ci.CollectionEncoder, "encode_passages", "encode_s", count=True)
        wrap(ci.CollectionIndexer, "train", "kmeans_s")  # ragatouille replaces _train_kmeans itself
        wrap(residual.ResidualCodec, "compress", "compress_s")
        wrap(ci.CollectionIndexer, "finalize", "finalize_s")
        # colbert_modal's PLAID builds encode with engine.encoder.encode_tokens (ids, lengths, ...)
        from colbert_modal.engine import encoder

        wrap(encoder, "encode_tokens", "encode_s", count=True)
        return self

    def __enter__(self) -> StageTimer:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        for obj, name, orig in reversed(self._undo):
            setattr(obj, name, orig)


def engine_source(rev: str, dest: Path) -> Path:
    """Write ``colbert_modal.engine`` as it was at git revision ``rev`` under ``dest``; returns what
    :func:`load_engine` takes: ``engine.py`` before the package split, the ``engine/`` folder after.

    Revisions from before ``_hub`` became ``hub`` import the new name."""
    def show(path: str) -> str:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout
        return re.sub(r"^(\s*from \.+)_hub import", r"\1hub import", text, flags=re.M)

    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/colbert_modal/"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    if "src/colbert_modal/engine.py" in names:
        (dest / "engine.py").write_text(show("src/colbert_modal/engine.py"))
        return dest / "engine.py"
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/colbert_modal/engine/"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    (dest / "engine").mkdir(exist_ok=True)
    for f in files:
        if f.endswith(".py"):
            (dest / "engine" / Path(f).name).write_text(show(f))
    return dest / "engine"


def load_engine(src: str | Path | None, name: str = "colbert_modal._engine_bench") -> Any:
    """``colbert_modal.engine`` (``src`` None), or another revision's copy written by :func:`engine_source`,
    loaded as module ``name`` of the installed package (so its relative imports find colbert_modal's modules)."""
    if src is None:
        from colbert_modal import engine

        return engine
    src = Path(src)
    name = re.sub(r"[^\w.]", "_", name)
    if src.is_dir():
        spec = importlib.util.spec_from_file_location(name, src / "__init__.py", submodule_search_locations=[str(src)])
    else:
        spec = importlib.util.spec_from_file_location(name, src)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _w_write_ckpt(model: str, path: str) -> dict[str, Any]:
    kwargs = dict(MODELS[model])
    if "writer" in kwargs:  # a checkpoint made from real weights, by a bench module
        import importlib

        module, fn = kwargs.pop("writer").rsplit(".", 1)
        getattr(importlib.import_module(module), fn)(path, **kwargs)
        return {"path": path}
    from colbert_modal.testing import write_tiny_checkpoint

    write_tiny_checkpoint(path, **kwargs)
    return {"path": path}


if __name__ == "__main__":
    worker_main({"write_ckpt": _w_write_ckpt})
