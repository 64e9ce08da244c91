"""colbert_modal vs raw ragatouille vs the seed's pipeline, on the same PDFs and checkpoint.

    nice -n 10 .venv/bin/python bench/compare.py --model tiny
    nice -n 10 .venv/bin/python bench/compare.py --model base --pdfs-only federal-register-2020-17221.pdf --skip cm_plaid

Pipelines (each stage in its own child process; figures are ratios taken in
one process tree, so they hold on a noisy machine):

``cm``       ``ColbertIndexer.index(pdfs)`` (backend auto = exact below 10k chunks) + ``search``
``cm_plaid`` the same with ``backend="plaid"`` (same algorithm as raw: the overhead figure)
``raw``      pypdf text, the same chunks, ``RAGPretrainedModel.index(split_documents=False)``,
             ``from_index`` + ``rag.search``
``seed``     llama-index ``SimpleDirectoryReader`` + ``rag.index(split_documents=True,
             max_document_length=512)``, ``from_index`` + ``search``
``exact``    reference: brute-force MaxSim over every token embedding of the same
             chunks (colbert-ai's encoder, our own scoring loop) for top-10 overlap

Models: ``tiny`` (lexical, ~1 MB), ``tiny-random``, ``base`` (random BERT-base
sized: 768 hidden, 12 layers, so encoding costs what colbertv2.0 costs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (  # noqa: E402
    StageTimer, checkpoint, env, make_queries, measure_search, overlap_at_k, pick_pdfs, run_worker, worker_main,
)

SCRIPT = Path(__file__).resolve()


# --- workers (child processes) ----------------------------------------------------


def w_cm_index(pdfs: list[str], ckpt: str, root: str, name: str, backend: str, chunks_out: str,
               max_tokens: int, precision: str = "auto") -> dict[str, Any]:
    t0 = time.perf_counter()
    import colbert_modal
    from colbert_modal import engine as eng

    t_import = time.perf_counter() - t0
    timer = StageTimer()
    enc = {"s": 0.0}
    orig = eng.Engine.encode_documents

    def timed(self: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            enc["s"] += time.perf_counter() - t

    eng.Engine.encode_documents = timed  # type: ignore[method-assign]
    eng.import_ragatouille()
    timer.install()
    idx = colbert_modal.ColbertIndexer(name, model=ckpt, index_root=root, backend=backend, max_tokens=max_tokens,
                                      progress=False, precision=precision)
    t0 = time.perf_counter()
    report = idx.index(pdfs)
    total = time.perf_counter() - t0
    chunks = idx.store.current().chunks()
    Path(chunks_out).write_text(json.dumps({"ids": [c.id for c in chunks], "texts": [c.text for c in chunks]}))
    t = report.timings
    stages = dict(timer.t) if backend == "plaid" else {"encode_s": enc["s"]}
    return {"import_s": t_import, "index_s": total, "load_s": t["discover"] + t["load"], "chunk_s": t["chunk"],
            "engine_s": t["encode_and_build"], "publish_s": t["publish"], "n_chunks": len(chunks),
            "n_files": report.documents_total, "precision": [eng.get_engine(ckpt, precision=precision).resolved_precision],
            **stages}


def rag_index(ckpt: str, root: str, collection: list[str], **options: Any) -> tuple[Any, dict[str, Any]]:
    """Raw ragatouille: load the model, ``rag.index(collection, **options)``; timed, with colbert-ai's stages."""
    from ragatouille import RAGPretrainedModel

    timer = StageTimer().install()
    t0 = time.perf_counter()
    rag = RAGPretrainedModel.from_pretrained(ckpt, index_root=root, verbose=0)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = rag.index(collection=collection, overwrite_index="force_silent_overwrite", **options)
    return rag, {"model_load_s": t_model, "rag_index_s": time.perf_counter() - t0, "index_path": path, **timer.t}


def w_raw_index(pdfs: list[str], ckpt: str, root: str, chunks_file: str, max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    from pypdf import PdfReader

    pages = [p.extract_text() or "" for f in pdfs for p in PdfReader(f).pages]
    t_load = time.perf_counter() - t0
    texts = json.loads(Path(chunks_file).read_text())["texts"]
    t0 = time.perf_counter()
    from ragatouille import RAGPretrainedModel  # noqa: F401 - timed: the import alone

    t_import = time.perf_counter() - t0
    _, figures = rag_index(ckpt, root, texts, index_name="raw", max_document_length=max_tokens + 3,
                             split_documents=False)
    return {"load_s": t_load, "pages": len(pages), "import_s": t_import, "n_chunks": len(texts), **figures}


def w_seed_index(pdfs: list[str], ckpt: str, root: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    from llama_index.core import SimpleDirectoryReader

    docs = SimpleDirectoryReader(input_files=pdfs).load_data()
    t_load = time.perf_counter() - t0
    rag, figures = rag_index(ckpt, root, [d.text for d in docs], index_name="seed", max_document_length=512,
                             split_documents=True)
    return {"load_s": t_load, "docs": len(docs), "n_chunks": len(rag.model.collection), **figures}


def w_cm_search(root: str, name: str, queries: list[str], chunks_file: str, n_warm: int,
                precision: str = "auto") -> dict[str, Any]:
    t0 = time.perf_counter()
    import colbert_modal

    idx = colbert_modal.ColbertIndexer(name, index_root=root, progress=False, precision=precision)
    pos = {cid: i for i, cid in enumerate(json.loads(Path(chunks_file).read_text())["ids"])}
    t_import = time.perf_counter() - t0
    out = measure_search(lambda q: [pos[r.chunk_id] for r in idx.search(q, k=10)],
                         lambda qs: [[pos[r.chunk_id] for r in rs] for rs in idx.search_batch(qs, k=10)],
                         queries, n_warm)
    out["first_search_s"] += t_import
    return out


def w_raw_search(index_path: str, queries: list[str], n_warm: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    from ragatouille import RAGPretrainedModel

    rag = RAGPretrainedModel.from_index(index_path, verbose=0)
    t_open = time.perf_counter() - t0

    def single(q: str) -> list[int]:
        return [r["passage_id"] for r in rag.search(q, k=10)]

    def batch(qs: list[str]) -> list[list[int]]:
        return [[r["passage_id"] for r in rs] for rs in rag.search(qs, k=10)]

    out = measure_search(single, batch, queries, n_warm)
    out["first_search_s"] += t_open
    return out


def w_exact(ckpt: str, chunks_file: str, queries: list[str], max_tokens: int) -> dict[str, Any]:
    """Brute-force MaxSim over all token embeddings: the reference ranking."""
    import torch
    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint

    texts = json.loads(Path(chunks_file).read_text())["texts"]
    t0 = time.perf_counter()
    cfg = ColBERTConfig.load_from_checkpoint(ckpt)
    cfg.doc_maxlen = max_tokens + 3
    ck = Checkpoint(ckpt, colbert_config=cfg)
    ck.doc_tokenizer.doc_maxlen = max_tokens + 3
    with torch.inference_mode():
        D, lens = ck.docFromText(texts, bsize=32, keep_dims="flatten", to_cpu=True)
        Q = ck.queryFromText(queries, bsize=64, to_cpu=True).float()  # query_maxlen 32
        D = D.float()
        offs = [0]
        for n in lens:
            offs.append(offs[-1] + int(n))
        scores = torch.empty(len(queries), len(texts))
        for i in range(len(texts)):
            d = D[offs[i]:offs[i + 1]]  # [len_i, dim]
            scores[:, i] = torch.einsum("qtd,ld->qtl", Q, d).amax(-1).sum(-1)
        ranked = torch.topk(scores, min(10, len(texts)), dim=1).indices.tolist()
    return {"ranked": ranked, "exact_s": time.perf_counter() - t0, "tokens": int(sum(lens))}


def w_import(n: int) -> dict[str, Any]:
    def once(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env())
        return time.perf_counter() - t0

    base = [once("pass") for _ in range(n)]
    cm = [once("import colbert_modal") for _ in range(n)]
    return {"python_s": statistics.median(base), "import_wall_s": statistics.median(cm),
            "import_s": statistics.median(cm) - statistics.median(base)}


WORKERS = {"cm_index": w_cm_index, "raw_index": w_raw_index, "seed_index": w_seed_index,
           "cm_search": w_cm_search, "raw_search": w_raw_search, "exact": w_exact, "import": w_import}


# --- driver ---------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-random", "base"])
    ap.add_argument("--pdfs", default=None, help="folder of PDFs (default: /work/shared/data/pdfs, then tests/data/pdfs)")
    ap.add_argument("--pdfs-only", nargs="*", default=None, help="file names to keep from that folder")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--warm", type=int, default=30, help="warm single queries timed")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cm_plaid", "seed", "exact", "import"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="colbert_modal's encoder precision (raw ragatouille and the reference stay float32 on CPU)")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    pdfs = pick_pdfs(a.pdfs)
    if a.pdfs_only:
        pdfs = [p for p in pdfs if p.name in a.pdfs_only]
    ckpt = str(checkpoint(a.model))
    _common.PREFETCH.append(Path(ckpt))
    work = Path(tempfile.mkdtemp(prefix="cm-bench-"))
    files = [str(p) for p in pdfs]
    chunks = str(work / "chunks.json")
    R: dict[str, Any] = {"model": a.model, "pdfs": [p.name for p in pdfs]}
    log = lambda *x: print(*x, file=sys.stderr, flush=True)  # noqa: E731
    try:
        log(f"model={a.model} pdfs={len(files)} work={work}")
        R["cm"] = run_worker(SCRIPT, "cm_index", dict(pdfs=files, ckpt=ckpt, root=str(work / "cm"), name="bench",
                                                     backend="auto", chunks_out=chunks, max_tokens=a.max_tokens,
                                                     precision=a.precision))
        log("cm index", {k: round(v, 3) for k, v in R["cm"].items() if isinstance(v, float)})
        texts = json.loads(Path(chunks).read_text())["texts"]
        queries = make_queries(texts, ckpt, a.queries)
        R["queries"] = queries
        R["raw"] = run_worker(SCRIPT, "raw_index", dict(pdfs=files, ckpt=ckpt, root=str(work / "raw"),
                                                       chunks_file=chunks, max_tokens=a.max_tokens))
        log("raw index", {k: round(v, 3) for k, v in R["raw"].items() if isinstance(v, float)})
        if "cm_plaid" not in a.skip:
            R["cm_plaid"] = run_worker(SCRIPT, "cm_index", dict(
                pdfs=files, ckpt=ckpt, root=str(work / "cmp"), name="bench", backend="plaid",
                chunks_out=str(work / "chunks-plaid.json"), max_tokens=a.max_tokens, precision=a.precision))
            log("cm plaid index", {k: round(v, 3) for k, v in R["cm_plaid"].items() if isinstance(v, float)})
        if "seed" not in a.skip:
            R["seed"] = run_worker(SCRIPT, "seed_index", dict(pdfs=files, ckpt=ckpt, root=str(work / "seed")))
            log("seed index", {k: round(v, 3) for k, v in R["seed"].items() if isinstance(v, float)})
        sargs = dict(queries=queries, n_warm=a.warm)
        R["cm_search"] = run_worker(SCRIPT, "cm_search", dict(root=str(work / "cm"), name="bench", chunks_file=chunks,
                                                              precision=a.precision, **sargs))
        R["raw_search"] = run_worker(SCRIPT, "raw_search", dict(index_path=R["raw"]["index_path"], **sargs))
        if "cm_plaid" in R:
            R["cm_plaid_search"] = run_worker(SCRIPT, "cm_search", dict(root=str(work / "cmp"), name="bench",
                                                                        chunks_file=str(work / "chunks-plaid.json"),
                                                                        precision=a.precision, **sargs))
        if "seed" in R:
            R["seed_search"] = run_worker(SCRIPT, "raw_search", dict(index_path=R["seed"]["index_path"], **sargs))
        if "exact" not in a.skip:
            R["exact"] = run_worker(SCRIPT, "exact", dict(ckpt=ckpt, chunks_file=chunks, queries=queries,
                                                          max_tokens=a.max_tokens))
        if "import" not in a.skip:
            R["import"] = run_worker(SCRIPT, "import", dict(n=7))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(R)
    if a.json:
        Path(a.json).write_text(json.dumps(R, indent=1))


def report(R: dict[str, Any]) -> None:
    cm, raw = R["cm"], R["raw"]
    raw_total = raw["load_s"] + cm["chunk_s"] + raw["model_load_s"] + raw["rag_index_s"]
    print(f"\n== {R['model']} model, {len(R['pdfs'])} PDFs, {cm['n_chunks']} chunks,"
          f" colbert_modal precision {cm.get('precision', '?')} (raw: colbert-ai default) ==")
    print("indexing (s)          colbert_modal   raw ragatouille   seed (llama-index)")

    def line(name: str, a: Any, b: Any, c: Any = "-") -> None:
        f = lambda v: f"{v:10.2f}" if isinstance(v, float) else f"{v!s:>10}"  # noqa: E731
        print(f"  {name:20s}{f(a)}      {f(b)}        {f(c)}")

    seed = R.get("seed", {})
    line("chunks", cm["n_chunks"], raw["n_chunks"], seed.get("n_chunks", "-"))
    line("load (pdf text)", cm["load_s"], raw["load_s"], seed.get("load_s", "-"))
    line("chunk", cm["chunk_s"], cm["chunk_s"], "in index")
    line("encode", cm["encode_s"], raw["encode_s"], seed.get("encode_s", "-"))
    line("k-means+residuals", 0.0, raw["kmeans_s"], seed.get("kmeans_s", "-"))
    line("compress", 0.0, raw["compress_s"], seed.get("compress_s", "-"))
    line("engine build total", cm["engine_s"], raw["rag_index_s"], seed.get("rag_index_s", "-"))
    line("index total", cm["index_s"], raw_total,
         seed["load_s"] + seed["model_load_s"] + seed["rag_index_s"] if seed else "-")
    line("peak RSS (MB)", cm["peak_rss_mb"], raw["peak_rss_mb"], seed.get("peak_rss_mb", "-"))
    print(f"  encode passes: raw encoded {raw['encoded_passages']} passages for {raw['n_chunks']} chunks")
    print(f"  RATIO index total cm(exact)/raw = {cm['index_s'] / raw_total:.3f}   (target <= 0.6)")
    print(f"  RATIO engine build cm(exact)/raw rag.index = {cm['engine_s'] / raw['rag_index_s']:.3f}")
    if "cm_plaid" in R:
        cp = R["cm_plaid"]
        print(f"  RATIO index total cm(plaid)/raw = {cp['index_s'] / raw_total:.3f}   (overhead target <= 1.05)"
              f"  [cm plaid {cp['index_s']:.2f}s, raw {raw_total:.2f}s]")
    print("search                cm(exact)       raw PLAID        cm(plaid)   seed")
    S = [R.get(k, {}) for k in ("cm_search", "raw_search", "cm_plaid_search", "seed_search")]
    for key, label in [("first_search_s", "first after open s"), ("warm_p50_ms", "warm p50 ms"),
                       ("warm_p95_ms", "warm p95 ms"), ("singles_qps", "64 singles q/s"),
                       ("batch_qps", "batch 64 q/s"), ("batch_speedup", "batch/singles x"),
                       ("peak_rss_mb", "peak RSS MB")]:
        vals = ["%10.2f" % s[key] if key in s else "%10s" % "-" for s in S]
        print(f"  {label:20s}" + "   ".join(vals))
    cs, rs = R["cm_search"], R["raw_search"]
    print(f"  RATIO warm p50 cm/raw = {cs['warm_p50_ms'] / rs['warm_p50_ms']:.3f}  (target <= 1.1);"
          f" cm batch speedup {cs['batch_speedup']:.2f}x (target >= 3)")
    if "exact" in R:
        ref = R["exact"]["ranked"]
        print("top-10 overlap with exact MaxSim: "
              f"cm(exact) {overlap_at_k(cs['ranked'], ref):.3f}  raw PLAID {overlap_at_k(rs['ranked'], ref):.3f}"
              + (f"  cm(plaid) {overlap_at_k(R['cm_plaid_search']['ranked'], ref):.3f}" if "cm_plaid_search" in R else ""))
    if "import" in R:
        im = R["import"]
        print(f"import colbert_modal: {im['import_s']:.3f}s over bare python ({im['import_wall_s']:.3f}s wall,"
              f" python {im['python_s']:.3f}s; target < 0.3 s)")


if __name__ == "__main__":
    if not worker_main(WORKERS):
        main()
