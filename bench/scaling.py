"""Index time and peak RSS as the collection grows: colbert_modal (exact) vs raw ``rag.index``.

    nice -n 10 .venv/bin/python bench/scaling.py --model tiny --sizes 250 500 1000
    nice -n 10 .venv/bin/python bench/scaling.py --model tiny --sizes 2000

The collection is the chunks of the real PDFs (colbert_modal's chunker, 256
tokens), extended with word-shuffled copies when more are asked for than the
PDFs give. Each chunk is written as a ``.txt`` file so ``ColbertIndexer.index``
runs its whole pipeline; raw ragatouille indexes the same chunk texts
(``split_documents=False``). Every figure comes from its own child process:
peak RSS is that child's ``ru_maxrss``.

Prints per size: index seconds (cm, raw, ratio), encode seconds, passages
encoded, peak RSS while indexing (cm, raw) and while searching (cm exact
backend: open + 64 queries).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import checkpoint, make_queries, pick_pdfs, run_worker  # noqa: E402

COMPARE = Path(__file__).resolve().with_name("compare.py")


def base_chunks(pdfs: list[Path], ckpt: str, max_tokens: int) -> list[str]:
    """The chunk texts of ``pdfs`` as colbert_modal's chunker makes them (15% overlap)."""
    from colbert_modal.chunking import Chunker, load_tokenizer
    from colbert_modal.loaders import iter_documents

    ch = Chunker(load_tokenizer(ckpt), max_tokens=max_tokens, overlap=round(max_tokens * 0.15))
    return [c.text for d in iter_documents(pdfs) if hasattr(d, "pages") for c in ch.chunk(d)]


def corpus(pdfs: list[Path], ckpt: str, n: int, max_tokens: int) -> list[str]:
    """``n`` chunk texts: :func:`base_chunks`, extended with word-shuffled copies."""
    base = base_chunks(pdfs, ckpt, max_tokens)
    out = list(base)
    rng = random.Random(0)
    while len(out) < n:
        words = rng.choice(base).split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[250, 500, 1000])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--no-raw", action="store_true", help="colbert_modal only")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    ckpt = str(checkpoint(a.model))
    _common.PREFETCH.append(Path(ckpt))
    rows: list[dict[str, Any]] = []
    for n in a.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"cm-scale-{n}-"))
        try:
            texts = corpus(pick_pdfs(None), ckpt, n, a.max_tokens)
            docs = work / "docs"
            docs.mkdir()
            for i, t in enumerate(texts):
                (docs / f"c{i:06d}.txt").write_text(t, encoding="utf-8")
            chunks = str(work / "chunks.json")
            cm = run_worker(COMPARE, "cm_index", dict(pdfs=[str(docs)], ckpt=ckpt, root=str(work / "cm"), name="s",
                                                      backend="auto", chunks_out=chunks, max_tokens=a.max_tokens))
            queries = make_queries(json.loads(Path(chunks).read_text())["texts"], ckpt, 64)
            cs = run_worker(COMPARE, "cm_search", dict(root=str(work / "cm"), name="s", queries=queries,
                                                       chunks_file=chunks, n_warm=20))
            row = {"n": n, "chunks": cm["n_chunks"], "cm_index_s": cm["index_s"], "cm_encode_s": cm["encode_s"],
                   "cm_rss_mb": cm["peak_rss_mb"], "cm_search_rss_mb": cs["peak_rss_mb"],
                   "cm_p50_ms": cs["warm_p50_ms"], "cm_batch_x": cs["batch_speedup"]}
            if not a.no_raw:
                raw = run_worker(COMPARE, "raw_index", dict(pdfs=[], ckpt=ckpt, root=str(work / "raw"),
                                                           chunks_file=chunks, max_tokens=a.max_tokens))
                raw_total = raw["model_load_s"] + raw["rag_index_s"] + cm["chunk_s"] + cm["load_s"]
                row.update(raw_index_s=raw_total, raw_rag_index_s=raw["rag_index_s"], raw_encode_s=raw["encode_s"],
                           raw_kmeans_s=raw["kmeans_s"], raw_passages_encoded=raw["encoded_passages"],
                           raw_rss_mb=raw["peak_rss_mb"], ratio=cm["index_s"] / raw_total)
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n== scaling, {a.model} model ==")
    print(" chunks | cm index s | raw index s | cm/raw | cm enc s | raw enc s (passages) | raw k-means s |"
          " cm RSS MB | raw RSS MB | cm search RSS MB | cm p50 ms | cm batch x")
    for r in rows:
        print(f" {r['chunks']:6d} | {r['cm_index_s']:10.2f} | {r.get('raw_index_s', float('nan')):11.2f} |"
              f" {r.get('ratio', float('nan')):6.3f} | {r['cm_encode_s']:8.2f} |"
              f" {r.get('raw_encode_s', float('nan')):9.2f} ({r.get('raw_passages_encoded', '-')}) |"
              f" {r.get('raw_kmeans_s', float('nan')):13.2f} | {r['cm_rss_mb']:9.0f} | {r.get('raw_rss_mb', float('nan')):10.0f} |"
              f" {r['cm_search_rss_mb']:16.0f} | {r['cm_p50_ms']:9.1f} | {r['cm_batch_x']:9.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
