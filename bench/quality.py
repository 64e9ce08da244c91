"""Retrieval quality on real weights: the labelled query set, exact vs PLAID, precisions, chunk sizes.

    nice -n 10 .venv/bin/python bench/quality.py labelled                       # every labelled-set run
    nice -n 10 .venv/bin/python bench/quality.py labelled --runs cm_exact raw   # some of them
    nice -n 10 .venv/bin/python bench/quality.py build --chunks 2000 10000      # exact + PLAID indexes, kept
    nice -n 10 .venv/bin/python bench/quality.py overlap --chunks 2000          # search them

The checkpoint is ``real`` (``bench/real_weights.py``: all-MiniLM-L6-v2's
pretrained BERT with a seeded random orthogonal 384 -> 128 head); ``--model``
takes the random-weight ones too, for contrast. Queries: the labelled set
``bench/queries/labelled.jsonl`` (question, file, answer pages; see
``bench/queries/README.md``). A returned passage is relevant when it comes
from the question's file and one of its pages is an answer page.

``labelled`` runs, in child processes, over the 7 sample PDFs with a text
layer other than the German lecture notes (103 chunks of 256 tokens with
this vocabulary; 36 questions), or with ``--with-geotopo`` all 8 of
``_common.GOOD_PDFS`` (395 chunks, 39 questions):

``cm_exact``       ``ColbertIndexer(backend="exact", precision="fp32")`` (``auto`` is fp32 on CPUs without AMX)
``cm_exact_bf16``  the same with ``precision="bf16"`` (emulated, slowly, on CPUs without AMX)
``cm_plaid``       ``backend="plaid"`` (float32 on a CPU: the ``auto`` default)
``cm_exact_128`` / ``cm_exact_508``  ``max_tokens`` 128 / 508 (508 is the library's maximum: BERT's
                   512 positions less ``[CLS] [D] [SEP]``; 256 is the default)
``cm_plaid_128`` / ``cm_plaid_508``  the same for PLAID
``raw``            raw ragatouille on the same chunks (``rag.index(split_documents=False)``, ``rag.search``)
``seed``           the seed's pipeline: llama-index ``SimpleDirectoryReader`` (one document per page)
                   + ``rag.index(split_documents=True, max_document_length=512)``

Consecutive ``cm_*`` runs share one child process, in which each text is
encoded once per precision (:class:`EncodeOnce`): PLAID after exact takes
the exact run's encodings. Each prints recall@1 and recall@5 (share of questions with a relevant
passage in the top 1 / 5) and MRR@10, over all questions and over the
paraphrased ones, plus top-10 overlaps between runs on the same chunks.

``build`` / ``overlap``: the scaling corpus (the PDFs' chunks, extended with
word-shuffled copies to ``--chunks``; the same texts as
``scaling.corpus``), exact and PLAID indexes built by ``get_engine(ckpt,
precision="fp32")`` and kept under ``bench/results/quality/`` (a 10k-chunk
PLAID build takes tens of minutes on 2 cores). ``overlap`` opens them and
reports PLAID's top-10 overlap with exact MaxSim for the labelled questions
and for 64 keyword queries cut from the chunks (``_common.make_queries``),
recall of both backends on the labelled set (only the original chunks count
as relevant; their shuffled copies are distractors), and the same for a few
other PLAID search settings (ragatouille's defaults: ncells 8, centroid
score threshold 0.4 below 10k chunks; ncells 4, 0.45 from 10k to 100k).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import GOOD_PDFS, REPO, checkpoint, make_queries, overlap_at_k, pick_pdfs, run_worker, worker_main

SCRIPT = Path(__file__).resolve()
QUERIES = REPO / "bench" / "queries" / "labelled.jsonl"
RESULTS = REPO / "bench" / "results" / "quality"
K = 10

Hit = list[Any]  # [file name, [pages]]


def load_questions(path: Path = QUERIES) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- metrics ------------------------------------------------------------------------


def relevant(hit: Hit, q: dict[str, Any]) -> bool:
    return hit[0] == q["file"] and bool(set(hit[1]) & set(q["pages"]))


def first_relevant(hits: list[Hit], q: dict[str, Any]) -> int | None:
    """1-based rank of the first relevant passage in ``hits``, or None."""
    for rank, h in enumerate(hits[:K], 1):
        if relevant(h, q):
            return rank
    return None


def scores(ranked: list[list[Hit]], qs: list[dict[str, Any]], only: str | None = None) -> dict[str, float]:
    ranks = [first_relevant(h, q) for h, q in zip(ranked, qs, strict=True) if only is None or q["kind"] == only]
    n = len(ranks)
    return {"n": n,
            "recall@1": sum(r == 1 for r in ranks if r) / n,
            "recall@5": sum(r <= 5 for r in ranks if r) / n,
            "recall@10": sum(1 for r in ranks if r) / n,
            "mrr@10": sum(1 / r for r in ranks if r) / n}


def chunk_records(pdfs: list[Path], ckpt: str, max_tokens: int) -> list[tuple[str, str, list[int], str]]:
    """(text, file name, pages, chunk id) of each chunk, as ``ColbertIndexer`` and ``scaling.base_chunks`` make them."""
    from colbert_modal.chunking import Chunker, load_tokenizer
    from colbert_modal.loaders import iter_documents

    ch = Chunker(load_tokenizer(ckpt), max_tokens=max_tokens, overlap=round(max_tokens * 0.15))
    return [(c.text, Path(c.source).name, list(c.pages), c.id)
            for d in iter_documents(pdfs) if hasattr(d, "pages") for c in ch.chunk(d)]


# --- labelled-set workers (child processes) ------------------------------------------


def w_cm(ckpt: str, pdfs: list[str], root: str, runs: dict[str, dict[str, Any]],
         questions: list[str]) -> dict[str, Any]:
    """``ColbertIndexer.index`` + ``search_batch`` for each configuration in ``runs``, in this process.

    Runs of the same ``max_tokens`` index the same chunk texts; :class:`EncodeOnce`
    lets the second (PLAID after exact) take the first one's encodings.
    """
    import colbert_modal

    memo = EncodeOnce()
    out: dict[str, Any] = {}
    for name, o in runs.items():
        idx = colbert_modal.ColbertIndexer(name, model=ckpt, index_root=root, backend=o["backend"],
                                          precision=o["precision"], max_tokens=o["max_tokens"], progress=False)
        t0 = time.perf_counter()
        report = idx.index(pdfs)
        build = time.perf_counter() - t0
        res = idx.search_batch(questions, k=K)
        out[name] = {"ranked": [[[Path(r.source).name, list(r.pages)] for r in rs] for rs in res],
                     "ids": [[r.chunk_id for r in rs] for rs in res], "n_chunks": report.chunks_total,
                     "index_s": build, "skipped": [sk.path for sk in report.skipped],
                     "encoded": memo.misses, "from_cache": memo.hits}
        print(f"{name}: {report.chunks_total} chunks, texts encoded {memo.misses}, from cache {memo.hits}", flush=True)
    return out


def rag_index(ckpt: str, root: str, collection: list[str], **options: Any) -> tuple[Any, dict[str, Any]]:
    """Raw ragatouille: ``from_pretrained`` + ``rag.index(collection, **options)`` (as compare.rag_index, untimed)."""
    from ragatouille import RAGPretrainedModel

    rag = RAGPretrainedModel.from_pretrained(ckpt, index_root=root, verbose=0)
    t0 = time.perf_counter()
    path = rag.index(collection=collection, overwrite_index="force_silent_overwrite", **options)
    return rag, {"rag_index_s": time.perf_counter() - t0, "index_path": path}


def w_raw(ckpt: str, pdfs: list[str], root: str, max_tokens: int, questions: list[str]) -> dict[str, Any]:
    recs = chunk_records([Path(p) for p in pdfs], ckpt, max_tokens)
    rag, fig = rag_index(ckpt, root, [rec[0] for rec in recs], index_name="raw", split_documents=False,
                         max_document_length=max_tokens + 3)
    res = rag.search(questions, k=K)
    ranked = [[[recs[r["passage_id"]][1], recs[r["passage_id"]][2]] for r in rs] for rs in res]
    return {"ranked": ranked, "ids": [[recs[r["passage_id"]][3] for r in rs] for rs in res], "n_chunks": len(recs),
            "index_s": fig["rag_index_s"]}


def w_seed(ckpt: str, pdfs: list[str], root: str, questions: list[str]) -> dict[str, Any]:
    from llama_index.core import SimpleDirectoryReader

    docs = SimpleDirectoryReader(input_files=pdfs).load_data()
    pageno: dict[str, int] = {}
    where = []
    for d in docs:  # one document per page, in page order within a file
        name = Path(d.metadata.get("file_path") or d.metadata["file_name"]).name
        pageno[name] = pageno.get(name, 0) + 1
        where.append([name, [pageno[name]]])
    rag, fig = rag_index(ckpt, root, [d.text for d in docs], index_name="seed", split_documents=True,
                         max_document_length=512, document_ids=[str(i) for i in range(len(docs))])
    res = rag.search(questions, k=K)
    ranked = [[where[int(r["document_id"])] for r in rs] for rs in res]
    return {"ranked": ranked, "n_chunks": len(rag.model.collection), "n_pages": len(docs),
            "index_s": fig["rag_index_s"]}


#: The labelled runs' default corpus: GOOD_PDFS less the 117-page German lecture notes, which
#: make 292 of the 395 chunks and are the subject of only 3 (German) questions: on a shared
#: 2-core machine every run then encodes 103 chunks instead of 395 (``--with-geotopo`` puts
#: them back).
NO_GEOTOPO = [n for n in GOOD_PDFS if not n.startswith("GeoTopo")]
LABELLED_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "cm_exact": ("cm", dict(backend="exact", precision="fp32", max_tokens=256)),
    "cm_plaid": ("cm", dict(backend="plaid", precision="auto", max_tokens=256)),
    "cm_exact_bf16": ("cm", dict(backend="exact", precision="bf16", max_tokens=256)),
    "cm_exact_128": ("cm", dict(backend="exact", precision="fp32", max_tokens=128)),
    "cm_plaid_128": ("cm", dict(backend="plaid", precision="auto", max_tokens=128)),
    "cm_exact_508": ("cm", dict(backend="exact", precision="fp32", max_tokens=508)),
    "cm_plaid_508": ("cm", dict(backend="plaid", precision="auto", max_tokens=508)),
    "raw": ("raw", dict(max_tokens=256)),
    "seed": ("seed", {}),
}
#: top-10 overlaps reported between runs that rank the same chunks
PAIRS = [("cm_exact_bf16", "cm_exact"), ("cm_plaid", "cm_exact"), ("raw", "cm_exact"), ("raw", "cm_plaid"),
         ("cm_plaid_128", "cm_exact_128"), ("cm_plaid_508", "cm_exact_508")]


def labelled(a: argparse.Namespace) -> None:
    ckpt = str(checkpoint(a.model))
    _common.PREFETCH.append(Path(ckpt))
    names = GOOD_PDFS if a.with_geotopo else NO_GEOTOPO
    pdfs = [str(p) for p in pick_pdfs(None) if p.name in names]
    qs = [q for q in load_questions() if q["file"] in names]
    questions = [q["question"] for q in qs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = os.environ.get("QUALITY_TAG", "")  # a second driver running at the same time writes its own file
    out_file = RESULTS / f"labelled-{a.model}{'-geotopo' if a.with_geotopo else ''}{tag}.json"
    R: dict[str, Any] = json.loads(out_file.read_text()) if out_file.exists() and not a.fresh else {}
    R["_meta"] = {"model": a.model, "pdfs": [Path(p).name for p in pdfs], "questions": len(qs),
                  "library": os.environ.get("CM_REV", "working tree")}
    groups: list[list[str]] = []  # consecutive cm runs share a worker (and their encodings)
    for name in a.runs:
        if groups and LABELLED_RUNS[name][0] == "cm" and LABELLED_RUNS[groups[-1][0]][0] == "cm":
            groups[-1].append(name)
        else:
            groups.append([name])
    for group in groups:
        kind = LABELLED_RUNS[group[0]][0]
        work = Path(tempfile.mkdtemp(prefix=f"cm-q-{group[0]}-"))
        t0 = time.perf_counter()
        common = dict(ckpt=ckpt, pdfs=pdfs, root=str(work), questions=questions)
        if kind == "cm":
            res = run_worker(SCRIPT, "cm", dict(runs={n: LABELLED_RUNS[n][1] for n in group}, **common), timeout=7200)
        else:
            res = {group[0]: run_worker(SCRIPT, kind, dict(**LABELLED_RUNS[group[0]][1], **common), timeout=7200)}
        for name in group:
            r = res[name]
            r["scores"] = {"all": scores(r["ranked"], qs), "paraphrase": scores(r["ranked"], qs, "paraphrase")}
            R[name] = r
            s = r["scores"]["all"]
            print(f"{name:20s} chunks {r['n_chunks']:5d}  R@1 {s['recall@1']:.3f}  R@5 {s['recall@5']:.3f}"
                  f"  MRR@10 {s['mrr@10']:.3f}  (group of {len(group)}: {time.perf_counter() - t0:.0f}s)", flush=True)
        out_file.write_text(json.dumps(R, indent=1))
    report_labelled(R, qs)


def report_labelled(R: dict[str, Any], qs: list[dict[str, Any]]) -> None:
    n_para = sum(q["kind"] == "paraphrase" for q in qs)
    print(f"\n== labelled set: {len(qs)} questions ({n_para} paraphrases), model {R['_meta']['model']} ==")
    print(f"{'run':20s} {'chunks':>6s}  {'R@1':>5s} {'R@5':>5s} {'R@10':>5s} {'MRR@10':>6s}   paraphrases: R@1 R@5 MRR@10")
    for name, r in R.items():
        if name.startswith("_"):
            continue
        s, p = r["scores"]["all"], r["scores"]["paraphrase"]
        print(f"{name:20s} {r['n_chunks']:6d}  {s['recall@1']:.3f} {s['recall@5']:.3f} {s['recall@10']:.3f}"
              f" {s['mrr@10']:.3f}    {p['recall@1']:.3f} {p['recall@5']:.3f} {p['mrr@10']:.3f}")
    for a, b in PAIRS:  # the same chunks (same chunk ids) in both runs
        if a in R and b in R:
            print(f"top-10 overlap {a} vs {b}: {overlap_at_k(R[a]['ids'], R[b]['ids']):.3f}")


# --- scaling corpus: build and overlap ---------------------------------------------


def corpus_records(ckpt: str, n: int, max_tokens: int = 256) -> tuple[list[str], list[int], list[tuple[str, list[int]]]]:
    """The texts of ``scaling.corpus`` (same chunks, same seed), each copy's base chunk, and the
    base chunks' (file, pages)."""
    base = chunk_records(pick_pdfs(None), ckpt, max_tokens)
    texts = [rec[0] for rec in base]
    origin = list(range(len(base)))
    rng = random.Random(0)
    idx = list(range(len(base)))
    while len(texts) < n:
        i = rng.choice(idx)  # the same draws as rng.choice(base) in scaling.corpus
        words = base[i][0].split()
        rng.shuffle(words)
        texts.append(" ".join(words))
        origin.append(i)
    return texts[:n], origin[:n], [(rec[1], rec[2]) for rec in base]


class EncodeOnce:
    """Memoises ``colbert_modal.engine.encoder.encode_tokens`` per text (its token ids), in float32.

    Exact and PLAID builds of the same texts, and the 2k corpus inside the
    10k one, then encode each text once (per encoder precision): on 2 CPU cores one pass over 10k
    chunks with this model takes tens of minutes. Both builds call
    ``encode_tokens`` (the exact one for float16 output, PLAID's for float32
    on a CPU); the cached rows are the float32 outputs, cast as each caller
    asks, so each build stores what it would have computed itself (up to
    batch-shape rounding, ~1e-6).
    """

    def __init__(self) -> None:
        try:  # the engine package (after the engine split, ff1b395)
            from colbert_modal.engine import encoder as module

            name = "encode_tokens"
        except ImportError:  # engine.py before it (the figures in BENCHMARKS.md section 8: 548b8e2)
            from colbert_modal import engine as module  # type: ignore[no-redef]

            name = "_encode_tokens"
        self.orig = getattr(module, name)
        self.cache: dict[bytes, Any] = {}
        self.hits = self.misses = 0
        setattr(module, name, self)

    def __call__(self, ckpt: Any, ids: Any, lengths: Any, bsize: int, dtype: Any = None) -> tuple[Any, Any]:
        import numpy as np
        import torch

        amp = getattr(ckpt, "amp_manager", None)  # colbert_modal's _Autocast: the encoder's precision
        tag = str(getattr(amp, "precision", type(amp).__name__)).encode() + b"|"
        keys = [tag + ids[i, : int(lengths[i])].tobytes() for i in range(len(ids))]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            sel = np.asarray(todo)
            e, d = self.orig(ckpt, ids[sel], lengths[sel], bsize, torch.float32)
            off = 0
            for i, n in zip(todo, d, strict=True):
                self.cache[keys[i]] = e[off : off + int(n)]
                off += int(n)
        parts = [self.cache[k] for k in keys]
        out = np.concatenate(parts) if parts else np.zeros((0, 128), dtype=np.float32)
        want = np.float16 if dtype is None or dtype == torch.float16 else np.float32
        return out.astype(want), np.asarray([p.shape[0] for p in parts], dtype=np.int32)


def w_build(ckpt: str, sizes: list[int], out: str, backends: list[str]) -> dict[str, Any]:
    from colbert_modal.engine import get_engine

    memo = EncodeOnce()
    eng = get_engine(ckpt, precision="fp32")
    texts_all, origin_all, where = corpus_records(ckpt, max(sizes))
    times: dict[str, float] = {}
    for n in sorted(sizes):  # corpus(n) is a prefix of corpus(max): the small size first
        texts, origin = texts_all[:n], origin_all[:n]
        dest = Path(out.format(n=n))
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "corpus.json").write_text(json.dumps({"texts": texts, "origin": origin, "where": where}))
        for backend in backends:
            if (dest / f"{backend}.done").exists():
                print(f"{dest.name}/{backend}: already built", flush=True)
                continue
            t0 = time.perf_counter()
            if backend == "exact":
                eng.build_exact(texts, dest / backend, max_tokens=256)
            else:
                eng.build_plaid(texts, [str(i) for i in range(len(texts))], dest / backend, max_tokens=256)
            times[f"{n}-{backend}"] = time.perf_counter() - t0
            (dest / f"{backend}.done").write_text(json.dumps({"build_s": times[f"{n}-{backend}"],
                                                               "encoded": memo.misses, "from_cache": memo.hits}))
            print(f"built {backend} ({n} chunks) in {times[f'{n}-{backend}']:.0f}s;"
                  f" texts encoded so far {memo.misses}, taken from the cache {memo.hits}", flush=True)
    return {"sizes": sizes, "n_base": len(where), "build_s": times, "encoded": memo.misses, "from_cache": memo.hits}


#: PLAID search settings tried besides ragatouille's own: (ncells, centroid_score_threshold, ndocs)
PLAID_SETTINGS = [(4, 0.45, 1024), (8, 0.4, 1024), (16, 0.4, 2048), (32, 0.3, 4096)]


def w_overlap(ckpt: str, out: str, questions: list[dict[str, Any]], n_keyword: int) -> dict[str, Any]:
    from colbert_modal.engine import get_engine

    dest = Path(out)
    c = json.loads((dest / "corpus.json").read_text())
    texts, where = c["texts"], c["where"]
    n_base = len(where)
    keyword = make_queries(texts[:n_base], ckpt, n_keyword)
    qtexts = [q["question"] for q in questions] + keyword
    eng = get_engine(ckpt, precision="fp32")

    def hits(ids: list[list[int]]) -> list[list[Hit]]:  # shuffled copies: never relevant
        return [[list(where[i]) if i < n_base else ["(shuffled copy)", []] for i in row] for row in ids]

    R: dict[str, Any] = {"n": len(texts), "n_base": n_base, "keyword_queries": keyword}
    ex = eng.open(dest / "exact", "exact", texts)
    R["exact"] = [[i for i, _ in h] for h in ex.search(qtexts, K)]
    del ex
    pl = eng.open(dest / "plaid", "plaid", texts)
    R["plaid_default"] = [[i for i, _ in h] for h in pl.search(qtexts, K)]
    searcher = pl.rag.model.model_index.searcher  # loaded by the first search, with ragatouille's settings
    R["default_settings"] = [searcher.config.ncells, searcher.config.centroid_score_threshold, searcher.config.ndocs]
    for nc, thr, nd in PLAID_SETTINGS:
        searcher.configure(ncells=nc, centroid_score_threshold=thr, ndocs=nd)
        t0 = time.perf_counter()
        R[f"plaid_{nc}_{thr}_{nd}"] = [[i for i, _ in h] for h in pl.search(qtexts, K)]
        R[f"plaid_{nc}_{thr}_{nd}_s"] = time.perf_counter() - t0
    nq = len(questions)
    summary = {}
    for key in [k for k in R if k.startswith("plaid") and not k.endswith("_s")] + ["exact"]:
        ranked = R[key]
        summary[key] = {
            "overlap_labelled": overlap_at_k(ranked[:nq], R["exact"][:nq]),
            "overlap_keyword": overlap_at_k(ranked[nq:], R["exact"][nq:]),
            **{f"lab_{m}": v for m, v in scores(hits(ranked[:nq]), questions).items()},
        }
    R["summary"] = summary
    return R


def build(a: argparse.Namespace) -> None:
    ckpt = str(checkpoint(a.model))
    out = str(RESULTS / f"corpus-{a.model}-{{n}}")
    r = run_worker(SCRIPT, "build", dict(ckpt=ckpt, sizes=a.chunks, out=out, backends=a.backends), timeout=4 * 3600)
    print(json.dumps({k: v for k, v in r.items()}, indent=1))


def overlap(a: argparse.Namespace) -> None:
    ckpt = str(checkpoint(a.model))
    a.chunks = a.chunks[0]
    out = RESULTS / f"corpus-{a.model}-{a.chunks}"
    qs = load_questions()
    saved = RESULTS / f"overlap-{a.model}-{a.chunks}.json"
    if a.rescore and saved.exists():  # the figures of an earlier run, without searching again
        r = json.loads(saved.read_text())
    else:
        r = run_worker(SCRIPT, "overlap", dict(ckpt=ckpt, out=str(out), questions=qs, n_keyword=64), timeout=7200)
        saved.write_text(json.dumps(r, indent=1))
    # a word-shuffled copy credited as the chunk it was made from (copies often outrank their original)
    c = json.loads((out / "corpus.json").read_text())
    for key, s in r["summary"].items():
        ranked = [[list(c["where"][c["origin"][i]]) for i in row] for row in r[key][: len(qs)]]
        s.update({f"copy_{m}": v for m, v in scores(ranked, qs).items()})
    print(f"\n== {r['n']} chunks ({r['n_base']} from the PDFs), model {a.model}; ragatouille's PLAID settings here"
          f" (ncells, threshold, ndocs) = {r['default_settings']} ==")
    print(f"{'ranking':26s} {'overlap lab':>11s} {'overlap kw':>10s}  {'R@1':>5s} {'R@5':>5s} {'MRR@10':>6s}"
          "   copies credited: R@1   R@5 MRR@10")
    for key, s in r["summary"].items():
        print(f"{key:26s} {s['overlap_labelled']:11.3f} {s['overlap_keyword']:10.3f}  {s['lab_recall@1']:.3f}"
              f" {s['lab_recall@5']:.3f} {s['lab_mrr@10']:.3f}                    {s['copy_recall@1']:.3f}"
              f" {s['copy_recall@5']:.3f} {s['copy_mrr@10']:.3f}"
              + (f"   ({r[key + '_s']:.1f}s)" if key + "_s" in r else ""))


WORKERS = {"cm": w_cm, "raw": w_raw, "seed": w_seed, "build": w_build, "overlap": w_overlap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["labelled", "build", "overlap"])
    ap.add_argument("--model", default="real", choices=sorted(_common.MODELS))
    ap.add_argument("--runs", nargs="+", default=list(LABELLED_RUNS), choices=list(LABELLED_RUNS))
    ap.add_argument("--with-geotopo", action="store_true", help="labelled: search all 8 PDFs (395 chunks)")
    ap.add_argument("--fresh", action="store_true", help="labelled: forget earlier runs' results")
    ap.add_argument("--chunks", type=int, nargs="+", default=[2000], help="build: sizes; overlap: one size")
    ap.add_argument("--rescore", action="store_true", help="overlap: reuse the saved search results")
    ap.add_argument("--backends", nargs="+", default=["exact", "plaid"], choices=["exact", "plaid"])
    a = ap.parse_args()
    {"labelled": labelled, "build": build, "overlap": overlap}[a.what](a)


if __name__ == "__main__":
    if not worker_main(WORKERS):
        main()
