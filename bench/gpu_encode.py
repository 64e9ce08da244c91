"""Encoding and search on a CUDA GPU: tokens/s against the chip's peak, peak GPU memory as the corpus grows.

    PYTHONPATH=src python bench/gpu_encode.py --model base --json gpu.json

Needs CUDA: without it the script exits with status 2 and says so (it is not
run in CI or on the CPU-only development machine; see BENCHMARKS.md).

Everything goes through colbert-ai's encoder (``Checkpoint.docFromText``,
the same object ragatouille loads); ragatouille itself is used when it is
importable, else the checkpoint is loaded with colbert-ai directly (the GPU
machine has no ragatouille and no network). Sections:

``grid``
    ``N`` chunks (``--grid-n``) encoded by
    * ``raw``: colbert-ai's ``CollectionEncoder.encode_passages`` as raw
      ``rag.index`` runs it (``index_bsize=32``, colbert-ai's float16 autocast);
    * ``cm``: colbert_modal's ``Engine.encode_documents`` in the steps
      ``build_exact`` uses, per precision (``native`` = colbert-ai's float16,
      ``bf16``) and batch size.
    Reports non-padding tokens/s and MFU against ``--peak-tflops`` (default
    790: H100/H200 SXM dense bf16). FLOPs per token ~= 2 x parameters + 4 x
    layers x hidden x sequence length (attention), both terms printed.
``memory``
    ``Engine.build_exact`` (the streaming index build) at each of ``--sizes``:
    ``torch.cuda.max_memory_allocated`` must stay flat as the corpus grows.
``search``
    The smallest exact index: 64 single ``search`` calls vs one batch of 64
    (queries encoded on the GPU; ``ExactIndex`` keeps float16 embeddings on
    the GPU when the encoder is there, so MaxSim runs there too).
``agreement``
    bf16 vs float16 document embeddings of the same chunks: mean cosine of
    matching token vectors, and top-10 overlap of the two exact indexes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


CUDA = True  # False only under --cpu-smoke (a dry run of the script's code paths)


def _sync() -> None:
    import torch

    if CUDA:
        torch.cuda.synchronize()


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0


def _reset_peak() -> None:
    import torch

    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def load_engine(ckpt: str, precision: str) -> Any:
    """colbert_modal's Engine on the GPU; via ragatouille when it is installed."""
    from colbert_modal.engine import Engine

    eng = Engine(ckpt, precision=precision)
    try:
        from ragatouille import RAGPretrainedModel  # noqa: F401
    except ImportError:  # not installed, or only its models.index (gpu_plaid.py)
        from colbert.infra import ColBERTConfig
        from colbert.modeling.checkpoint import Checkpoint

        cfg = ColBERTConfig.load_from_checkpoint(ckpt)
        ck = Checkpoint(ckpt, colbert_config=cfg)
        # the two attributes of ragatouille's model the Engine reads besides the checkpoint
        eng._rag = SimpleNamespace(model=SimpleNamespace(inference_ckpt=ck, config=cfg, base_model_max_tokens=512))
    if CUDA:
        assert next(eng.rag.model.inference_ckpt.parameters()).device.type == "cuda"
    eng.checkpoint  # noqa: B018 - applies the precision
    return eng


def timed(fn: Any) -> tuple[Any, float]:
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--grid-n", type=int, default=4096)
    ap.add_argument("--bsizes", nargs="+", type=int, default=[32, 128, 512])
    ap.add_argument("--sizes", nargs="+", type=int, default=[2048, 8192, 32768])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["grid", "memory", "search", "agreement"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile one encode of N chunks (native precision, --bsizes[-1]) and print the top functions")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the code paths on a CPU (no figures): a dry run")
    a = ap.parse_args()

    import torch

    global CUDA
    CUDA = not a.cpu_smoke
    if CUDA and not torch.cuda.is_available():
        print("gpu_encode.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "nothing was measured. Run it on a GPU machine.", file=sys.stderr)
        raise SystemExit(2)

    from _common import checkpoint, make_queries, overlap_at_k, pick_pdfs
    from scaling import corpus

    R: dict[str, Any] = {"device": torch.cuda.get_device_name() if CUDA else "cpu (smoke)", "torch": torch.__version__}
    log = lambda *x: print(*x, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    ckpt = str(checkpoint(a.model))
    texts_all = corpus(pick_pdfs(None), ckpt, max(a.sizes + [a.grid_n]), a.max_tokens)
    log(f"checkpoint + corpus of {len(texts_all)} chunks: {time.perf_counter() - t0:.1f}s")

    engines = {p: load_engine(ckpt, p) for p in ("auto", "bf16")}
    native = engines["auto"]
    assert native.resolved_precision == ("native" if CUDA else native.resolved_precision)
    ck = native.checkpoint
    cfg = ck.bert.config
    params = sum(p.numel() for p in ck.parameters())
    seq = a.max_tokens + 3
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * seq
    flops_tok = 2 * params + attn
    R.update(params=params, flops_per_token=flops_tok)
    log(f"{R['device']}  torch {torch.__version__}  params {params / 1e6:.1f}M  FLOPs/token {flops_tok / 1e9:.3f} G"
        f" (2*params {2 * params / 1e9:.3f} G + attention {attn / 1e9:.3f} G)")

    def row(name: str, n: int, tokens: int, s: float, **extra: Any) -> dict[str, Any]:
        r = {"run": name, "chunks": n, "tokens": tokens, "s": round(s, 3), "tokens_per_s": round(tokens / s),
             "chunks_per_s": round(n / s, 1), "mfu": round(tokens / s * flops_tok / (a.peak_tflops * 1e12), 4),
             "peak_gib": round(_peak_gib(), 3), **extra}
        log(json.dumps(r))
        return r

    def encode_cm(eng: Any, texts: list[str], bsize: int) -> int:
        tokens = 0
        for s in range(0, len(texts), eng.encode_step):
            _, d = eng.encode_documents(texts[s : s + eng.encode_step], max_tokens=a.max_tokens, bsize=bsize)
            tokens += int(d.sum())
        return tokens

    # warm-up: cuBLAS handles, autocast caches, allocator
    for eng in engines.values():
        encode_cm(eng, texts_all[:256], 64)

    if a.profile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        _sync()
        pr.enable()
        tokens, s = timed(lambda: encode_cm(native, texts_all[: a.profile], a.bsizes[-1]))
        pr.disable()
        log(f"profile: {a.profile} chunks, bsize {a.bsizes[-1]}: {s:.2f}s, {tokens / s:,.0f} tok/s")
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)

    if "grid" not in a.skip:
        from colbert.indexing.collection_encoder import CollectionEncoder

        texts = texts_all[: a.grid_n]
        rows = []
        raw_cfg = ck.colbert_config.__class__.from_existing(ck.colbert_config)
        raw_cfg.configure(index_bsize=32, doc_maxlen=seq)
        ck.doc_tokenizer.doc_maxlen = seq
        enc = CollectionEncoder(raw_cfg, ck)
        import types

        from colbert.modeling.colbert import ColBERT

        ck.mask = types.MethodType(ColBERT.mask, ck)  # colbert-ai's own per-token mask for the raw runs
        for rep in range(2):
            _reset_peak()
            (embs, doclens), s = timed(lambda: enc.encode_passages(texts))
            rows.append(row("raw colbert-ai encode_passages (bsize 32, fp16 amp)", len(texts), int(sum(doclens)), s,
                            rep=rep))
        del embs, ck.mask
        from colbert_modal.engine.encoder import speed_up

        speed_up(ck)
        for prec, eng in engines.items():
            for bsize in a.bsizes:
                _reset_peak()
                tokens, s = timed(lambda: encode_cm(eng, texts, bsize))
                rows.append(row(f"cm encode_documents {eng.resolved_precision} bsize {bsize}", len(texts), tokens, s,
                                precision=eng.resolved_precision, bsize=bsize))
        R["grid"] = rows

    work = Path(tempfile.mkdtemp(prefix="cm-gpu-"))
    try:
        if "memory" not in a.skip:
            rows = []
            for n in a.sizes:
                d = work / f"exact-{n}"
                _reset_peak()
                _, s = timed(lambda: native.build_exact(texts_all[:n], d, max_tokens=a.max_tokens))
                tokens = int(json.loads((d / "exact.json").read_text())["tokens"])
                rows.append(row("cm build_exact (native)", n, tokens, s,
                                host_maxrss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)))
            peaks = [r["peak_gib"] for r in rows]
            R["memory"] = rows
            R["memory_flat"] = max(peaks) <= 1.1 * min(peaks)
            log(f"peak GPU memory across sizes {a.sizes}: {peaks} GiB -> flat: {R['memory_flat']}")

        n0 = a.sizes[0]
        d0 = work / f"exact-{n0}"
        if "search" not in a.skip and d0.exists():
            idx = native.open(d0, "exact", texts_all[:n0])
            queries = make_queries(texts_all[:n0], ckpt, 64)
            idx.search(queries[:4], 10)  # warm
            idx.search(queries[:1], 10)
            _, singles = timed(lambda: [idx.search([q], 10) for q in queries])
            _, batch = timed(lambda: idx.search(queries, 10))
            R["search"] = {"chunks": n0, "singles_qps": round(64 / singles, 1), "batch_qps": round(64 / batch, 1),
                           "batch_over_singles": round(singles / batch, 2),
                           "single_ms": round(1000 * singles / 64, 2)}
            log("search", json.dumps(R["search"]))

        if "agreement" not in a.skip:
            n = min(2048, n0)
            texts = texts_all[:n]
            e16, _ = native.encode_documents(texts[:256], max_tokens=a.max_tokens, bsize=64)
            eb, _ = engines["bf16"].encode_documents(texts[:256], max_tokens=a.max_tokens, bsize=64)
            A = torch.from_numpy(e16).float()
            B = torch.from_numpy(eb).float()
            cos = torch.nn.functional.cosine_similarity(A, B, dim=1)
            dn = work / "agree-native"
            db = work / "agree-bf16"
            native.build_exact(texts, dn, max_tokens=a.max_tokens)
            engines["bf16"].build_exact(texts, db, max_tokens=a.max_tokens)
            queries = make_queries(texts, ckpt, 64, seed=1)
            rn = [[i for i, _ in h] for h in native.open(dn, "exact", texts).search(queries, 10)]
            rb = [[i for i, _ in h] for h in engines["bf16"].open(db, "exact", texts).search(queries, 10)]
            R["agreement"] = {"token_cosine_mean": round(float(cos.mean()), 5),
                              "token_cosine_min": round(float(cos.min()), 5),
                              "top10_overlap_bf16_vs_fp16": round(overlap_at_k(rb, rn), 4), "chunks": n}
            log("agreement", json.dumps(R["agreement"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if a.json:
        Path(a.json).write_text(json.dumps(R, indent=1))
    log("\n== summary ==")
    for r in R.get("grid", []):
        log(f"{r['run']:58s} {r['tokens_per_s']:>10,d} tok/s  MFU {r['mfu']:.3f}  peak {r['peak_gib']:.2f} GiB")
    for r in R.get("memory", []):
        log(f"build_exact {r['chunks']:>6d} chunks {r['s']:7.2f}s {r['tokens_per_s']:>10,d} tok/s  peak {r['peak_gib']:.2f} GiB")
    for k in ("search", "agreement"):
        if k in R:
            log(k, R[k])
    log(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
