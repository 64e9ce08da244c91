"""PLAID index builds on a CUDA GPU, raw ragatouille vs colbert_modal, from 10k to 100k chunks.

    bash bench/gpu_run.sh gpu_plaid.py --sizes 10000 30000 100000
    PYTHONPATH=src python bench/gpu_plaid.py --cpu-smoke --model tiny --sizes 300 600   # dry run, CPU

Both sides run ragatouille's own PLAID build, ``PLAIDModelIndex.build`` (what
``rag.index`` calls after its bookkeeping of document ids), in this process,
on the same chunk texts (scaling.py's corpus: the real PDFs' chunks, extended
with word-shuffled copies) and the same checkpoint:

``raw``
    as ``rag.index`` runs it: ``bsize=32``, ragatouille's k-means
    (fast_pytorch_kmeans below 75k passages; from 75k colbert-ai's faiss
    k-means, which with the faiss-cpu wheel runs on the CPU). Sizes above
    ``--raw-max`` are not built; their raw encoding time is bounded from below
    (raw's measured tokens/s x the passages colbert-ai encodes), which bounds
    the ratio from above.
``cm``
    inside ``engine.plaid.plaid_build_patches`` with ``engine.plaid.plaid_build_options``,
    as ``Engine.build_plaid`` runs it (each passage encoded once by our
    encoder, our k-means on the GPU).

ragatouille's package ``__init__`` (langchain, llama-index, ...) is not needed
for this and is not installed on the GPU machine, so ragatouille's
``models.index`` is imported under a stub package. Per size: build seconds by
stage (encode, k-means + residual stats, compress, finalize), passages and
tokens encoded, peak GPU memory, peak RSS, and (up to ``--exact-max``) the
top-10 overlap of each index's search (ragatouille's search settings) with
exact MaxSim (``Engine.build_exact``, the default backend up to 10k chunks,
whose build time is reported too) over 64 queries. Sections run in order
until ``--budget-s`` is spent; results are written after each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CUDA = True


def import_rag_index() -> Any:
    """``ragatouille.models.index`` without running ``ragatouille/__init__.py``."""
    if "ragatouille" not in sys.modules:
        spec = importlib.util.find_spec("ragatouille")
        assert spec and spec.submodule_search_locations, "ragatouille is not installed"
        root = Path(list(spec.submodule_search_locations)[0])
        for name, path in (("ragatouille", root), ("ragatouille.models", root / "models")):
            mod = types.ModuleType(name)
            mod.__path__ = [str(path)]
            sys.modules[name] = mod
    import ragatouille.models.index as rag_index

    return rag_index


class RssPeak:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> RssPeak:
        self.peak = 0
        self._stop = threading.Event()
        page = os.sysconf("SC_PAGE_SIZE")

        def sample() -> None:
            while not self._stop.wait(0.05):
                with open("/proc/self/statm") as f:
                    self.peak = max(self.peak, int(f.read().split()[1]) * page)

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def plaid_build(side: str, ckpt: str, texts: list[str], root: Path, max_tokens: int) -> tuple[Any, dict[str, Any]]:
    """One PLAID build by ``side`` ("raw" or "cm"); returns (PLAIDModelIndex, figures)."""
    import contextlib

    import torch
    from colbert.infra import ColBERTConfig, Run, RunConfig

    from _common import StageTimer
    from colbert_modal.engine import plaid
    from gpu_encode import _peak_gib, _reset_peak, _sync

    rag_index = import_rag_index()
    # what ragatouille's ColBERT.__init__ and .index set up
    run_config = RunConfig(nranks=max(1, torch.cuda.device_count()), experiment="colbert", root=str(root))
    config = ColBERTConfig.from_existing(ColBERTConfig.load_from_checkpoint(ckpt), ColBERTConfig())
    config.experiment = "colbert"
    config.doc_maxlen = max_tokens + 3
    config.root = str(root / "colbert" / "indexes")
    device = "cuda" if CUDA else "cpu"
    if side == "raw":
        patches: Any = contextlib.nullcontext()
        options: dict[str, Any] = {"bsize": rag_index.PLAIDModelIndex._DEFAULT_INDEX_BSIZE}
    else:
        patches = plaid.plaid_build_patches("auto")
        options = plaid.plaid_build_options(device, len(texts))
    _reset_peak()
    index = rag_index.PLAIDModelIndex(config)
    # the timer first: our patches then call its wrappers (see StageTimer)
    with StageTimer() as timer, patches, RssPeak() as rss, Run().context(run_config):
        _sync()
        t0 = time.perf_counter()
        index.build(ckpt, texts, side, "force_silent_overwrite", False, **options)
        _sync()
        total = time.perf_counter() - t0
    meta = json.loads((root / "colbert" / "indexes" / side / "metadata.json").read_text())
    figures = {"build_s": total, **timer.t, "peak_gpu_gib": _peak_gib(), "peak_rss_gib": rss.peak / 2**30,
               "num_partitions": meta.get("num_partitions"), "num_embeddings": meta.get("num_embeddings"),
               "kmeans_niters": index.config.kmeans_niters, **options}
    return index, figures


def plaid_rankings(index: Any, ckpt: str, texts: list[str], side: str, queries: list[str]) -> list[list[int]]:
    index._load_searcher(ckpt, texts, side)
    return [list(r[0]) for r in index._batch_search(queries, 10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10000, 30000, 100000])
    ap.add_argument("--raw-max", type=int, default=74999, help="largest size raw builds (default: below faiss-on-CPU)")
    ap.add_argument("--exact-max", type=int, default=30000, help="largest size with the exact reference and overlap")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no section after this many seconds")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-smoke", action="store_true", help="run the code paths on a CPU (no figures): a dry run")
    a = ap.parse_args()

    import torch

    import gpu_encode

    global CUDA
    CUDA = gpu_encode.CUDA = not a.cpu_smoke
    if CUDA and not torch.cuda.is_available():
        print("gpu_plaid.py needs a CUDA GPU; nothing was measured.", file=sys.stderr)
        raise SystemExit(2)
    from _common import checkpoint, make_queries, overlap_at_k, pick_pdfs
    from scaling import corpus

    t_start = time.perf_counter()
    log = lambda *x: print(f"[{time.perf_counter() - t_start:6.1f}s]", *x, flush=True)  # noqa: E731
    R: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu (smoke)", "torch": torch.__version__,
                         "sizes": {}}

    def save() -> None:
        if a.json:
            Path(a.json).write_text(json.dumps(R, indent=1))

    ckpt = str(checkpoint(a.model))
    texts_all = corpus(pick_pdfs(None), ckpt, max(a.sizes), a.max_tokens)
    queries = make_queries(texts_all[: min(a.sizes)], ckpt, 64)
    import_rag_index()
    eng = gpu_encode.load_engine(ckpt, "auto")
    log(f"{R['device']}: checkpoint, corpus of {len(texts_all)} chunks, engine")
    from colbert.indexing.codecs.residual import ResidualCodec

    ResidualCodec.try_load_torch_extensions(use_gpu=CUDA)  # colbert-ai's CUDA extensions: compiled once, untimed
    log("colbert-ai's extensions loaded")
    raw_passages_per_s: list[float] = []
    for n in a.sizes:
        if time.perf_counter() - t_start > a.budget_s:
            log(f"budget spent: {n} chunks skipped")
            break
        texts = texts_all[:n]
        row: dict[str, Any] = R["sizes"].setdefault(str(n), {"chunks": n})
        work = Path(tempfile.mkdtemp(prefix=f"cm-gpu-plaid-{n}-"))
        try:
            ref = None
            if n <= a.exact_max:
                gpu_encode._reset_peak()
                _, s = gpu_encode.timed(lambda t=texts, w=work: eng.build_exact(t, w / "exact", max_tokens=a.max_tokens))
                row["cm_exact_build_s"] = s
                row["cm_exact_peak_gpu_gib"] = gpu_encode._peak_gib()
                ref = [[i for i, _ in h] for h in eng.open(work / "exact", "exact", texts).search(queries, 10)]
                log(f"{n}: cm exact build {s:.1f}s")
            sides = ["cm"] + (["raw"] if n <= a.raw_max else [])
            for side in sides:
                index, fig = plaid_build(side, ckpt, texts, work / side, a.max_tokens)
                row[side] = fig
                if ref is not None:
                    fig["overlap_vs_exact"] = overlap_at_k(plaid_rankings(index, ckpt, texts, side, queries), ref)
                del index
                log(f"{n}: {side} " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fig.items()}))
                save()
            if "raw" in row:
                row["ratio"] = row["cm"]["build_s"] / row["raw"]["build_s"]
                raw_passages_per_s.append(row["raw"]["encoded_passages"] / row["raw"]["encode_s"])
            elif raw_passages_per_s:
                # colbert-ai's sample: 16 * sqrt(120 * n) passages, then all n again
                raw_passages = n + min(n, 1 + int(16 * (120 * n) ** 0.5))
                row["raw_encode_lower_bound_s"] = raw_passages / raw_passages_per_s[-1]
                row["ratio_upper_bound"] = row["cm"]["build_s"] / row["raw_encode_lower_bound_s"]
            log(f"{n}: " + json.dumps({k: round(v, 3) for k, v in row.items() if isinstance(v, float)}))
            save()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log("done")
    print(f"\n== PLAID builds, {R['device']}, {a.model} model ==")
    print(" chunks | cm exact s | cm PLAID s | raw PLAID s | cm/raw | cm enc s (passages) | raw enc s (passages) |"
          " cm k-means s | raw k-means s | cm GPU GiB | raw GPU GiB | overlap with exact: cm / raw")
    for n, r in R["sizes"].items():
        cm, raw = r.get("cm", {}), r.get("raw", {})
        nan = float("nan")
        ratio = r.get("ratio", r.get("ratio_upper_bound", nan))
        print(f" {n:>6} | {r.get('cm_exact_build_s', nan):10.1f} | {cm.get('build_s', nan):10.1f} |"
              f" {raw.get('build_s', r.get('raw_encode_lower_bound_s', nan)):11.1f}{'' if raw else '+'} |"
              f" {ratio:6.3f}{'' if raw else '-'} | {cm.get('encode_s', nan):8.1f} ({cm.get('encoded_passages', '-')}) |"
              f" {raw.get('encode_s', nan):9.1f} ({raw.get('encoded_passages', '-')}) | {cm.get('kmeans_s', nan):12.1f} |"
              f" {raw.get('kmeans_s', nan):13.1f} | {cm.get('peak_gpu_gib', nan):10.2f} | {raw.get('peak_gpu_gib', nan):11.2f} |"
              f" {cm.get('overlap_vs_exact', nan):.3f} / {raw.get('overlap_vs_exact', nan):.3f}")
    print("(+ raw not built: lower bound from its encoding alone; - the ratio is then an upper bound)")


if __name__ == "__main__":
    main()
