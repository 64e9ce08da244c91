"""Document encoding on a GPU: tokens/s against the chip's peak, and peak memory as the corpus grows.

    python bench/gpu_encode.py --model base --sizes 1000 4000 16000 --dtype bf16
    python bench/gpu_encode.py --model base --path engine      # through colbert_modal's Engine

Needs CUDA: without it the script exits with status 2 and says so (it is not
run in CI or on the CPU-only development machine; see BENCHMARKS.md).

What it measures, per corpus size (chunks of the real PDFs, 256 tokens,
extended with word-shuffled copies):

* ``tokens/s``: non-padding document tokens encoded per second (CUDA
  synchronised), batches of ``--bsize`` chunks under ``torch.autocast`` with
  ``--dtype`` (bf16 or fp16); embeddings are copied back to the host as
  float16 as the exact backend stores them.
* ``MFU``: tokens/s x FLOPs per token / ``--peak-tflops`` (default 790: the
  H200/H100 SXM dense bf16 peak). FLOPs per token ~= 2 x parameters (the
  weight matmuls) + 4 x layers x hidden x sequence length (attention scores
  and mixing); both terms are printed.
* ``peak GiB``: ``torch.cuda.max_memory_allocated`` for the size; encoding is
  batched, so it must stay flat as the corpus grows.

``--path engine`` encodes through ``colbert_modal.engine.Engine.encode_documents``
(colbert-ai's ``docFromText``, the library's own path and its own precision
settings) in the steps ``build_exact`` uses; ``--path direct`` (default) calls
the checkpoint's ``doc()`` per batch under autocast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000, 16000])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--bsize", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--path", default="direct", choices=["direct", "engine"])
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_encode.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "nothing was measured. Run it on a GPU machine.", file=sys.stderr)
        raise SystemExit(2)

    from _common import checkpoint, pick_pdfs
    from scaling import corpus

    ckpt = str(checkpoint(a.model))
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    from colbert_modal.engine import Engine

    eng = Engine(ckpt)
    ck = eng.checkpoint
    ck.to("cuda")
    cfg = ck.bert.config
    params = sum(p.numel() for p in ck.parameters())
    seq = a.max_tokens + 3
    flops_tok = 2 * params + 4 * cfg.num_hidden_layers * cfg.hidden_size * seq
    print(f"device {torch.cuda.get_device_name()}  params {params / 1e6:.1f}M  FLOPs/token {flops_tok / 1e9:.3f} G"
          f" (2*params {2 * params / 1e9:.3f} G + attention {4 * cfg.num_hidden_layers * cfg.hidden_size * seq / 1e9:.3f} G)")
    ck.doc_tokenizer.doc_maxlen = seq
    rows = []
    for n in a.sizes:
        texts = corpus(pick_pdfs(None), ckpt, n, a.max_tokens)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        tokens = 0
        t0 = time.perf_counter()
        if a.path == "engine":
            for s in range(0, n, eng.encode_step):
                with torch.autocast("cuda", dtype=dtype):
                    e, d = eng.encode_documents(texts[s : s + eng.encode_step], max_tokens=a.max_tokens, bsize=a.bsize)
                tokens += int(d.sum())
        else:
            batches, _ = ck.doc_tokenizer.tensorize(texts, bsize=a.bsize)
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                for ids, mask in batches:
                    D, m = ck.doc(ids.cuda(non_blocking=True), mask.cuda(non_blocking=True), keep_dims="return_mask")
                    D[m.squeeze(-1)].to(torch.float16).cpu()
                    tokens += int(mask.sum())
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = tokens / dt
        row = {"chunks": n, "tokens": tokens, "s": dt, "tokens_per_s": tps,
               "mfu": tps * flops_tok / (a.peak_tflops * 1e12),
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    flat = max(r["peak_gib"] for r in rows) <= 1.1 * min(r["peak_gib"] for r in rows)
    print(f"peak memory flat across sizes: {flat}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
