"""Check bench/queries/labelled.jsonl against pypdf's text of the sample PDFs (the text colbert_modal indexes).

    .venv/bin/python bench/queries/check_labelled.py                       # check the file, print notes
    .venv/bin/python bench/queries/check_labelled.py --find "07-1315"      # where a string occurs, for new entries
    .venv/bin/python bench/queries/check_labelled.py --tokenizer CKPT_DIR  # also print each identifier's WordPieces

Every entry: fields and values well formed; its ``evidence`` occurs (whitespace
and dash style normalised) on every listed page, except the exceptions in
``EVIDENCE_NOT_ON`` (another wording of the same fact on that page); where it
also occurs on an unlisted page a note is printed.

``kind: identifier`` entries are held to more: their ``evidence`` is the
identifier as printed, and it must occur on exactly the listed pages of
``file`` and in no other PDF of the searched corpus (``_common.GOOD_PDFS``),
so that "every page that holds the identifier" is the label. For that match
an identifier broken over a line after a dash, ``@`` or ``/`` (``FAA-2020-
0686``) is joined again, case is ignored, and the match must not continue a
word or number on either side (``39.13`` does not match ``39.131``).

Exit status 1, with one line per problem, when a check fails.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import GOOD_PDFS  # noqa: E402  (bench/_common.py: the searched corpus)

PDFS = Path(os.environ.get("PDFS", "/work/shared/data/pdfs"))
LABELLED = HERE / "labelled.jsonl"
FIELDS = ["id", "question", "file", "pages", "kind", "lang", "evidence"]
KINDS = {"paraphrase", "keyword", "identifier"}
LANGS = {"en", "de"}

#: (id, page): listed pages that state the fact in other words than the evidence phrase.
EVIDENCE_NOT_ON = {
    ("q01", 6): "the AD's own paragraph (a): 'The FAA must receive comments on this AD action by September 21'",
}

DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-"})


def norm(s: str) -> str:
    """Whitespace runs to one space, dashes to '-' (the match of make_labelled.py since issue 12)."""
    return re.sub(r"\s+", " ", s.translate(DASHES)).strip()


def joined(s: str) -> str:
    """norm(), lower-cased, with a line break after a dash, '@' or '/' inside a token taken out."""
    return re.sub(r"(?<=\S[-@/]) ", "", norm(s)).casefold()


@cache
def page_texts(name: str) -> tuple[str, ...]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # font notices, as colbert_modal's loader quiets them
    return tuple((p.extract_text() or "") for p in PdfReader(PDFS / name).pages)


def id_pages(term: str, name: str) -> list[int]:
    """1-based pages of ``name`` that hold ``term`` as an identifier (see the module docstring)."""
    key = re.escape(joined(term))
    pat = re.compile(rf"(?<![^\W_]){key}(?![^\W_])")
    return [n for n, t in enumerate(page_texts(name), 1) if pat.search(joined(t))]


def phrase_pages(phrase: str, name: str) -> list[int]:
    return [n for n, t in enumerate(page_texts(name), 1) if norm(phrase) in norm(t)]


def check(rows: list[dict], *, tokenizer: object = None) -> tuple[list[str], list[str]]:
    """(problems, notes) for the labelled rows."""
    bad: list[str] = []
    notes: list[str] = []
    for i, r in enumerate(rows, 1):
        rid = r.get("id", f"line {i}")
        if rid != f"q{i:02d}":
            bad.append(f"line {i}: id {rid!r}, expected 'q{i:02d}'")
        if list(r) != FIELDS:
            bad.append(f"{rid}: fields {list(r)}, expected {FIELDS}")
            continue
        if r["kind"] not in KINDS or r["lang"] not in LANGS:
            bad.append(f"{rid}: kind {r['kind']!r} / lang {r['lang']!r}")
        if not (PDFS / r["file"]).is_file():
            bad.append(f"{rid}: no file {PDFS / r['file']}")
            continue
        n_pages = len(page_texts(r["file"]))
        pp = r["pages"]
        if not pp or pp != sorted(set(pp)) or not all(isinstance(p, int) and 1 <= p <= n_pages for p in pp):
            bad.append(f"{rid}: pages {pp} not sorted distinct 1-based pages of {r['file']} ({n_pages} pages)")
            continue
        ident = r["kind"] == "identifier"
        found = id_pages(r["evidence"], r["file"]) if ident else phrase_pages(r["evidence"], r["file"])
        for p in pp:
            if not ident and p not in found and (rid, p) not in EVIDENCE_NOT_ON:
                bad.append(f"{rid}: evidence {r['evidence']!r} not on page {p} of {r['file']} (found on {found})")
        if ident:
            if found != pp:
                bad.append(f"{rid}: identifier {r['evidence']!r} is on pages {found} of {r['file']}, labelled {pp}")
            for other in GOOD_PDFS:
                if other != r["file"] and (elsewhere := id_pages(r["evidence"], other)):
                    bad.append(f"{rid}: identifier {r['evidence']!r} also in {other}, pages {elsewhere}")
            if tokenizer is not None:
                pieces = tokenizer.tokenize(r["question"])  # type: ignore[attr-defined]
                notes.append(f"{rid}: {r['question']!r} -> {len(pieces)} pieces {pieces}")
        else:
            for extra in found:
                if extra not in pp:
                    notes.append(f"{rid}: evidence also on page {extra} (not labelled)")
    return bad, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", default=str(LABELLED))
    ap.add_argument("--find", metavar="TERM", help="print the pages of every corpus PDF that hold TERM, and stop")
    ap.add_argument("--tokenizer", metavar="DIR", help="a checkpoint folder: print the identifier queries' WordPieces")
    a = ap.parse_args()
    if a.find:
        for name in GOOD_PDFS:
            if (ids := id_pages(a.find, name)) or (ph := phrase_pages(a.find, name)):
                print(f"{name}: identifier match {ids}" + ("" if ids else f", phrase match {ph}"))
        return 0
    tok = None
    if a.tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
    rows = [json.loads(x) for x in Path(a.path).read_text(encoding="utf-8").splitlines() if x.strip()]
    bad, notes = check(rows, tokenizer=tok)
    for line in notes:
        print("note", line)
    for line in bad:
        print("FAIL", line)
    kinds = {k: sum(r.get("kind") == k for r in rows) for k in sorted(KINDS)}
    files = {f: sum(r.get("file") == f for r in rows) for f in dict.fromkeys(r.get("file") for r in rows)}
    print(f"{len(rows)} entries {kinds}; by file {files}; {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
