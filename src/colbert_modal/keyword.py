"""The keyword (BM25) index of a generation: SQLite FTS5, one file beside ``chunks.jsonl``.

Every generation that has ``chunks.jsonl`` gets ``keyword.sqlite``
(:data:`KEYWORD_FILE`), written by :meth:`~colbert_modal.store.IndexStore.seal`
from the same chunks, in the same order (row id = the chunk's position), and
covered by the generation's checksums: it is published, verified, copied
and removed with the generation, so it is never out of step with the
ColBERT index. Indexes made before it have none; :class:`KeywordIndex`
then builds the same file in memory from the chunks on first use.

**Tokens.** FTS5's ``unicode61`` tokenizer (case and diacritics folded),
with ``-``, ``.``, ``/`` and ``_`` kept inside words, so an identifier such as
``FAA-2020-0839``, ``39.13`` or ``PN/123-A`` is one term. Before tokenizing,
those joiners are dropped where they are not between letters or digits
(a sentence's full stop), and every compound's parts are added after the
text, so ``"2020-0839"`` or ``"well known"`` still match a text saying
``FAA-2020-0839`` or ``well-known``. A query is tokenized the same way (by
FTS5 itself, in memory); its text never reaches an FTS5 ``MATCH``, so quotes,
``*``, ``NEAR`` or parentheses in it are plain characters, never operators.

**Scores.** Okapi BM25 as FTS5's ``bm25()`` computes it (k1 = 1.2, b = 0.75,
IDF ``log((N - n + 0.5) / (n + 0.5))``, at least 1e-6), over the terms of
the query (any term matches), evaluated here from FTS5's postings so the
statistics (N, average length, each term's document count) can be those
of every shard together (:func:`combine_stats`): a sharded index scores
each chunk exactly as the unsharded one would.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigurationError, IndexStorageError

__all__ = [
    "HYBRID_DEPTH",
    "KEYWORD_FILE",
    "MODES",
    "MODE_SCHEMA",
    "RRF_K",
    "TOKENIZER",
    "KeywordIndex",
    "KeywordStats",
    "build_keyword_file",
    "check_mode",
    "combine_stats",
    "query_terms",
    "request_how",
]

#: The keyword index's file name in a generation directory.
KEYWORD_FILE = "keyword.sqlite"
#: The FTS5 tokenizer of new keyword files (recorded in each file's ``meta`` table).
TOKENIZER = "unicode61 remove_diacritics 2 tokenchars '-./_'"
#: The search modes: ColBERT alone (the default), BM25 alone, or both fused by reciprocal rank.
MODES = ("colbert", "hybrid", "keyword")
#: The constant of reciprocal rank fusion: a hit at rank r adds ``weight / (RRF_K + r)``.
RRF_K = 60
#: How deep each ranking is fused in hybrid mode (at least ``k``).
HYBRID_DEPTH = 100
_FORMAT = "1"
K1, B = 1.2, 0.75
_JOIN = "-./_"
_EDGE = re.compile(r"(?<![^\W_])[-./_]+|[-./_]+(?![^\W_])")  # a joiner not between two letters/digits
_COMPOUND = re.compile(r"[^\W_]+(?:[-./_]+[^\W_]+)+")
_SPLIT = re.compile(r"[-./_]+")

#: A query's statistics in one index (or several shards summed): ``docs`` (N), ``tokens``
#: (total length) and ``df``: term -> how many chunks hold it. Plain data (it travels to Modal).
KeywordStats = dict[str, Any]


def _prepare(text: str) -> str:
    """``text`` as it is tokenized: stray joiners dropped, compounds' parts added after it."""
    text = _EDGE.sub(" ", text)
    parts = [" ".join(_SPLIT.split(m)) for m in _COMPOUND.findall(text)]
    return text + ("\n" + "\n".join(parts) if parts else "")


def _fts5_error(exc: sqlite3.Error) -> IndexStorageError:
    return IndexStorageError(
        f"SQLite's FTS5 is not usable in this Python ({exc}); keyword and hybrid search need a Python whose "
        "sqlite3 has FTS5 (CPython's official builds and python-build-standalone do)"
    )


def _create(con: sqlite3.Connection, tokenizer: str) -> None:
    try:
        con.execute(f"CREATE VIRTUAL TABLE chunks USING fts5(text, tokenize=\"{tokenizer}\")")
    except sqlite3.OperationalError as exc:
        raise _fts5_error(exc) from exc


def query_terms(queries: Sequence[str], tokenizer: str = TOKENIZER) -> list[list[str]]:
    """Each query's distinct terms (sorted), as FTS5 with ``tokenizer`` reads them; no query syntax."""
    con = sqlite3.connect(":memory:")
    try:
        _create(con, tokenizer)
        con.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, chunks, instance)")
        con.executemany("INSERT INTO chunks(rowid, text) VALUES (?, ?)",
                        [(i, _prepare(q)) for i, q in enumerate(queries)])
        out: list[set[str]] = [set() for _ in queries]
        for term, doc in con.execute("SELECT term, doc FROM temp.v"):
            out[doc].add(term)
        return [sorted(t) for t in out]
    finally:
        con.close()


def _fill(con: sqlite3.Connection, texts: Sequence[str], tokenizer: str) -> None:
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("CREATE TABLE lengths (pid INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    _create(con, tokenizer)
    con.executemany("INSERT INTO chunks(rowid, text) VALUES (?, ?)", ((i, _prepare(t)) for i, t in enumerate(texts)))
    con.execute("INSERT INTO chunks(chunks) VALUES ('optimize')")
    con.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, chunks, instance)")
    con.execute("INSERT INTO lengths SELECT doc, COUNT(*) FROM temp.v GROUP BY doc")
    con.execute("DROP TABLE temp.v")
    tokens = con.execute("SELECT COALESCE(SUM(n), 0) FROM lengths").fetchone()[0]
    con.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("format", _FORMAT), ("tokenizer", tokenizer), ("docs", str(len(texts))), ("tokens", str(tokens)),
    ])
    con.commit()


def build_keyword_file(path: Path, texts: Sequence[str]) -> None:
    """Write the keyword index of ``texts`` (row id = position) to ``path`` (replaced if it exists)."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        _fill(con, texts, TOKENIZER)
    finally:
        con.close()


def combine_stats(parts: Sequence[Sequence[KeywordStats]], n_queries: int) -> list[KeywordStats]:
    """Per query, the statistics of several shards (each a list of one :data:`KeywordStats` per query) summed."""
    out: list[KeywordStats] = []
    for per_query in zip(*parts, strict=True) if parts else [()] * n_queries:
        df: dict[str, int] = {}
        for s in per_query:
            for term, n in s["df"].items():
                df[term] = df.get(term, 0) + int(n)
        out.append({"docs": sum(int(s["docs"]) for s in per_query),
                    "tokens": sum(int(s["tokens"]) for s in per_query), "df": df})
    return out


class KeywordIndex:
    """One generation's keyword index, open for search (thread-safe).

    :meth:`open` reads a generation's :data:`KEYWORD_FILE` (read-only);
    :meth:`in_memory` builds the same index from the chunk texts (an index
    made before keyword files).
    """

    def __init__(self, con: sqlite3.Connection, where: str) -> None:
        self._con = con
        self._lock = threading.Lock()
        self.where = where
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            self.tokenizer = str(meta["tokenizer"])
            self.docs, self.tokens = int(meta["docs"]), int(meta["tokens"])
            self.lengths = np.zeros(self.docs, dtype=np.float64)
            for pid, n in con.execute("SELECT pid, n FROM lengths"):
                self.lengths[pid] = n
            con.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, chunks, instance)")
            con.execute("CREATE VIRTUAL TABLE temp.r USING fts5vocab(main, chunks, row)")
        except (sqlite3.Error, KeyError, ValueError, IndexError) as exc:
            con.close()
            raise IndexStorageError(f"keyword index {where} cannot be read ({type(exc).__name__}: {exc}); "
                                    "rebuild with index(..., rebuild=True)") from exc

    @classmethod
    def open(cls, path: Path) -> KeywordIndex:
        try:
            con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise IndexStorageError(f"keyword index {path} cannot be opened ({exc})") from exc
        return cls(con, str(path))

    @classmethod
    def in_memory(cls, texts: Sequence[str]) -> KeywordIndex:
        con = sqlite3.connect(":memory:", check_same_thread=False)
        _fill(con, texts, TOKENIZER)
        return cls(con, "(built in memory)")

    def close(self) -> None:
        self._con.close()

    def terms(self, queries: Sequence[str]) -> list[list[str]]:
        return query_terms(queries, self.tokenizer)

    def _postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The chunks holding ``term`` and how often: (positions, counts)."""
        with self._lock:
            rows = self._con.execute("SELECT doc, COUNT(*) FROM temp.v WHERE term = ? GROUP BY doc", (term,)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        arr = np.asarray(rows, dtype=np.int64)
        return arr[:, 0], arr[:, 1].astype(np.float64)

    def _df(self, term: str) -> int:
        """How many chunks hold ``term`` (FTS5's row vocabulary: no postings read)."""
        with self._lock:
            row = self._con.execute("SELECT doc FROM temp.r WHERE term = ?", (term,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self, queries: Sequence[str]) -> list[KeywordStats]:
        """Each query's :data:`KeywordStats` in this index."""
        return [{"docs": self.docs, "tokens": self.tokens, "df": {t: self._df(t) for t in terms}}
                for terms in self.terms(queries)]

    def scores(self, query: str, stats: KeywordStats | None = None) -> np.ndarray:
        """BM25 of every chunk for ``query`` (0: no term of it), with ``stats`` (default: this index's own)."""
        terms = self.terms([query])[0]
        if stats is None:
            stats = self.stats([query])[0]
        n_all = int(stats["docs"])
        avgdl = int(stats["tokens"]) / n_all if n_all else 0.0
        out = np.zeros(self.docs, dtype=np.float64)
        for term in terms:
            docs, tf = self._postings(term)
            if not len(docs):
                continue
            n = int(stats["df"].get(term, len(docs)))
            idf = math.log((n_all - n + 0.5) / (n + 0.5)) if n_all else 0.0
            idf = idf if idf > 0 else 1e-6
            norm = K1 * (1 - B + B * self.lengths[docs] / avgdl) if avgdl else K1 * (1 - B)
            out[docs] += idf * (tf * (K1 + 1)) / (tf + norm)
        return out

    def search(self, query: str, k: int, subset: Any = None, stats: KeywordStats | None = None) -> list[tuple[int, float]]:
        """The chunks holding a term of ``query``, as engine hits (position, score), at least the best ``k``
        (every chunk tied with the ``k``-th too); ``subset``: only these positions (a sorted int array)."""
        scores = self.scores(query, stats)
        if subset is not None:
            keep = np.zeros(self.docs, dtype=bool)
            keep[np.asarray(subset, dtype=np.int64)] = True
            scores = np.where(keep, scores, 0.0)
        found = np.flatnonzero(scores > 0)
        if len(found) > k:
            s32 = scores[found].astype(np.float32)
            kth = np.partition(s32, len(s32) - k)[len(s32) - k]
            found = found[s32 >= kth]
        return [(int(i), float(scores[i])) for i in found]


def check_mode(mode: object, keyword_weight: object) -> None:
    """ConfigurationError unless ``mode`` is a search mode and ``keyword_weight`` a finite number >= 0
    (its ``field`` names the culprit, for the HTTP API's 400)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise _field_error("mode", f"mode must be one of {', '.join(MODES)}; got {str(mode)[:40]!r}")
    if isinstance(keyword_weight, bool) or not isinstance(keyword_weight, (int, float)) or not (
            math.isfinite(keyword_weight) and keyword_weight >= 0):
        raise _field_error("keyword_weight", f"keyword_weight must be a finite number >= 0, got {keyword_weight!r}")


def request_how(body: Any) -> dict[str, Any]:
    """The ``mode`` and ``keyword_weight`` of an HTTP search request's JSON body (those given), checked."""
    how = {f: body[f] for f in ("mode", "keyword_weight") if f in body}
    check_mode(how.get("mode", "colbert"), how.get("keyword_weight", 1.0))
    return how


#: The HTTP API's ``mode`` and ``keyword_weight`` request fields, as OpenAPI properties.
MODE_SCHEMA = {"mode": {"enum": list(MODES), "default": "colbert"}, "keyword_weight": {"type": "number", "minimum": 0}}


def _field_error(field: str, message: str) -> ConfigurationError:
    exc = ConfigurationError(message)
    exc.field = field  # type: ignore[attr-defined]
    return exc

