"""Index the PDFs in examples/pdfs and search them, in this process (local mode).

    python examples/search_pdfs.py                      # colbertv2.0 if it can be had
    python examples/search_pdfs.py "oral argument" -k 3
    python examples/search_pdfs.py --model /path/to/colbertv2.0

``--model auto`` (the default) uses colbert-ir/colbertv2.0 when it is in the
Hugging Face cache or can be downloaded; on a machine with neither (offline,
CI) it says so and uses a tiny offline demo checkpoint written to disk, whose
ranking is keyword overlap, not real ColBERT quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from colbert_modal import ColbertIndexer, ModelLoadError
from colbert_modal.display import format_pages

HERE = Path(__file__).parent
QUERIES = ["what is this text about", "oral argument before the court", "two column layout"]


def pick_model(choice: str) -> str:
    if choice != "auto":
        return choice
    from colbert_modal.hub import resolve_model

    try:
        return resolve_model("colbert-ir/colbertv2.0")
    except ModelLoadError as exc:
        print(f"note: {exc}\nnote: using a tiny offline demo checkpoint instead (keyword-level ranking).\n",
              file=sys.stderr)
        from colbert_modal.testing import write_tiny_checkpoint

        words = " ".join(p.stem for p in (HERE / "pdfs").glob("*.pdf")).replace("-", " ").split()
        return str(write_tiny_checkpoint(Path(tempfile.gettempdir()) / "colbert-modal-demo-checkpoint",
                                         extra_words=words + "oral argument court column layout text".split()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", default=QUERIES)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--pdfs", type=Path, default=HERE / "pdfs")
    parser.add_argument("--model", default="auto", help="hub id, checkpoint directory, or 'auto'")
    parser.add_argument("--name", default="examples")
    parser.add_argument("--index-root", default=None, help="default: $COLBERT_MODAL_INDEX_ROOT or the user data dir")
    args = parser.parse_args()

    indexer = ColbertIndexer(args.name, model=pick_model(args.model), index_root=args.index_root)
    report = indexer.index([args.pdfs], rebuild=True)
    print(f"indexed {len(report.indexed)} files, {report.chunks_total} chunks into {indexer.store.path}")
    for skipped in report.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    for query in args.queries:
        print(f"\n> {query}")
        for hit in indexer.search(query, k=args.k):
            snippet = " ".join(hit.text.split())[:110]
            print(f"  {hit.rank}. {hit.score:6.2f}  {Path(hit.source).name} {format_pages(hit.pages)}  {snippet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
