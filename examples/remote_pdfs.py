"""Index a folder of PDFs on Modal GPUs, then search it.

Loading and chunking run here; only the chunks travel to Modal, where a GPU
container encodes them into a ColBERT index on the ``colbert-modal-indexes``
Volume. Searches run in a warm Modal container that has the model and index
loaded.

    pip install colbert-modal
    modal setup                      # once: Modal credentials
    python examples/remote_pdfs.py ./papers "late interaction retrieval" "PLAID centroids"

The first run builds the Modal image (CUDA, torch, ragatouille, the model
weights, compiled extensions): several minutes, once. Pass ``--verbose`` to
watch it. With ``--deployed`` (after ``modal deploy -m colbert_modal.modal_app``)
warm containers are reused across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from colbert_modal import ColbertIndexer, ColbertModalError
from colbert_modal.display import format_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder of PDFs (searched recursively; .txt/.md files too)")
    parser.add_argument("queries", nargs="*", help="queries to run after indexing")
    parser.add_argument("--name", default="pdfs", help="index name on the Volume (default: pdfs)")
    parser.add_argument("-k", type=int, default=5, help="results per query (default: 5)")
    parser.add_argument("--model", default=None, help="hub id of the ColBERT model (default: colbert-ir/colbertv2.0)")
    parser.add_argument("--gpu", default=None, help="override the GPU, e.g. A100 (default: L4, then A10G, then T4)")
    parser.add_argument("--rebuild", action="store_true", help="re-index everything")
    parser.add_argument("--deployed", action="store_true", help="use the deployed app instead of an ephemeral run")
    parser.add_argument("--pull", action="store_true", help="copy the index to this machine afterwards")
    parser.add_argument("--verbose", action="store_true", help="show Modal's logs (image build, containers)")
    args = parser.parse_args(argv)

    if args.deployed:
        os.environ["COLBERT_MODAL_REMOTE_APP"] = "deployed"
    try:
        with ColbertIndexer(args.name, model=args.model, mode="remote", gpu=args.gpu, verbose=args.verbose) as idx:
            t0 = time.perf_counter()
            report = idx.index(args.folder, rebuild=args.rebuild)
            print(
                f"indexed {len(report.indexed)} file(s), {len(report.unchanged)} unchanged, "
                f"{len(report.removed)} removed; {report.chunks_total} chunks in {time.perf_counter() - t0:.1f} s"
            )
            for skipped in report.skipped:
                print(f"  skipped {skipped.path}: {skipped.reason}")
            for query in args.queries:
                t0 = time.perf_counter()
                results = idx.search(query, k=args.k)
                print(f"\n{query!r} ({(time.perf_counter() - t0) * 1000:.0f} ms)")
                for r in results:
                    where = f"{os.path.basename(r.source)} {format_pages(r.pages)}".strip()
                    snippet = " ".join(r.text.split())[:120]
                    print(f"  {r.rank}. [{r.score:.2f}] {where}: {snippet}")
            if args.pull:
                print(f"\npulled to {idx.pull()}")
    except ColbertModalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
