"""Rerank: score a given list of texts for a query with a ColBERT model (MaxSim), no index needed.

The texts are encoded with the same document encoder, and scored with the
same MaxSim, as an exact index's chunks (:mod:`colbert_modal.engine.exact`),
so a text that is also a chunk of an index built with the same model and
``max_tokens`` gets the score that index's search gives it. Texts longer
than ``max_tokens`` model tokens are cut there, as ColBERT's document
encoder does.

Equal scores (compared as float32, :func:`~colbert_modal.search.score_key`)
are ordered by id, then by position in the list given: the rule of
:func:`~colbert_modal.search.result_key` with the id for the source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .chunking import DEFAULT_MAX_TOKENS, check_max_tokens
from .engine import Encoder, get_engine
from .errors import ConfigurationError
from .hub import DEFAULT_MODEL
from .records import RerankResult
from .search import check_queries, score_key

__all__ = ["Item", "check_items", "check_k", "check_query", "default_model", "read_inputs", "rerank", "rerank_items"]

#: The keys a record given as a mapping may have.
RECORD_KEYS = frozenset({"text", "id", "metadata"})


class Item(NamedTuple):
    """One checked text to rerank: its text, id (None: none given) and metadata."""

    text: str
    id: str | None
    metadata: dict[str, Any]


def _named(i: int, item: Any) -> str:
    shown = repr(item)
    return f"item {i} ({shown[:60] + '...' if len(shown) > 60 else shown})"


def _check_item(i: int, item: Any) -> Item:
    if isinstance(item, str):
        text, rid, meta = item, None, None
    elif isinstance(item, Mapping):
        unknown = sorted(map(str, set(item) - RECORD_KEYS))
        if unknown:
            raise ConfigurationError(f"{_named(i, item)}: unknown keys {unknown}; a record has text, id, metadata")
        if "text" not in item:
            raise ConfigurationError(f"{_named(i, item)}: a record needs a 'text'")
        text, rid, meta = item["text"], item.get("id"), item.get("metadata")
    elif hasattr(item, "text"):  # a Document, a SearchResult, an app's own record
        text, meta = item.text, getattr(item, "metadata", None)
        rid = getattr(item, "id", None) if getattr(item, "id", None) is not None else getattr(item, "chunk_id", None)
    else:
        raise ConfigurationError(
            f"{_named(i, item)}: expected a string, a mapping with 'text', or an object with a .text attribute"
        )
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"{_named(i, item)}: its text must be a non-empty string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{_named(i, item)}: its text holds lone surrogates (not valid Unicode)") from None
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if rid is not None and not isinstance(rid, str):
        raise ConfigurationError(f"{_named(i, item)}: its id must be a string, got {type(rid).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise ConfigurationError(f"{_named(i, item)}: its metadata must be a mapping, got {type(meta).__name__}")
    return Item(text, rid, dict(meta or {}))


def check_items(texts: Any) -> list[Item]:
    """``texts`` (strings, mappings with ``text`` and optional ``id``/``metadata``, or objects with ``.text``)
    checked; raises :class:`~colbert_modal.ConfigurationError` naming the first bad item."""
    if isinstance(texts, (str, bytes, Mapping)) or not isinstance(texts, Iterable):
        raise ConfigurationError(
            f"rerank() takes a list of texts or records, got {type(texts).__name__}; wrap a single text in a list"
        )
    items = [_check_item(i, item) for i, item in enumerate(texts)]
    if not items:
        raise ConfigurationError("rerank() needs at least one text, got an empty list")
    return items


def check_query(query: Any) -> str:
    """One query string, checked as a search checks its queries."""
    if not isinstance(query, str):
        raise ConfigurationError(f"rerank() takes one query string, got {type(query).__name__}")
    return check_queries([query], 1)[0]


def check_k(k: Any) -> int | None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ConfigurationError(f"k must be a positive integer or None (all), got {k!r}")
    return k


def default_model() -> str:
    """The model used where none is given and no index names one: ``$COLBERT_MODAL_MODEL``, else the default."""
    return os.environ.get("COLBERT_MODAL_MODEL") or DEFAULT_MODEL


def maxsim_scores(encoder: Encoder, query: str, texts: Sequence[str], max_tokens: int) -> list[float]:
    """MaxSim of ``query`` against each text, as an exact index scores its chunks (float32)."""
    import numpy as np
    import torch

    embs, doclens = encoder.encode_documents(list(texts), max_tokens=max_tokens, cut=True)
    Q = encoder.encode_queries([query])[0]  # [qlen, dim], float32; masked rows are zero
    device = encoder.device
    dtype = torch.float16 if device != "cpu" else torch.float32  # as ExactIndex computes, on either
    with torch.inference_mode():
        D = torch.from_numpy(np.asarray(embs)).to(device, dtype)
        sims = D @ Q.to(device, dtype).T  # [tokens, qlen]
        scores: list[float] = []
        for part in torch.split(sims, [int(n) for n in doclens]):
            scores.append(float(part.amax(0).float().sum()) if part.shape[0] else float("-inf"))
    return scores


def rerank_items(
    encoder: Encoder, query: str, items: Sequence[Item], k: int | None, *, max_tokens: int
) -> list[RerankResult]:
    """``items`` scored for ``query`` with ``encoder``, best first (ties by id, then position), the best ``k``."""
    scores = maxsim_scores(encoder, query, [it.text for it in items], max_tokens)
    order = sorted(range(len(items)), key=lambda i: (-score_key(scores[i]), items[i].id or "", i))
    return [
        RerankResult(rank=rank, score=scores[i], text=items[i].text, id=items[i].id, index=i,
                     metadata=items[i].metadata)
        for rank, i in enumerate(order[:k] if k is not None else order, start=1)
    ]


def rerank(
    query: str,
    texts: Iterable[Any],
    *,
    k: int | None = None,
    model: str | os.PathLike[str] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    precision: str | None = None,
) -> list[RerankResult]:
    """Score ``texts`` for ``query`` with a ColBERT model in this process, best first; no index needed.

    ``texts``: strings, or records (a mapping with ``text`` and optional
    ``id`` and ``metadata``, or any object with ``.text``, such as a
    :class:`~colbert_modal.SearchResult`). ``k``: keep the best ``k``
    (default: all). ``model``: a hub id or a local checkpoint directory
    (default ``$COLBERT_MODAL_MODEL``, else ``colbert-ir/colbertv2.0``).
    ``max_tokens``: texts are cut at this many model tokens (an index's
    chunk size, 256 by default). Returns :class:`~colbert_modal.records.RerankResult`
    records (``rank``, ``score``, ``text``, ``id``, ``index``, ``metadata``).
    Bad input raises :class:`~colbert_modal.ConfigurationError` naming the item.
    """
    query, items, k = check_query(query), check_items(texts), check_k(k)
    max_tokens = check_max_tokens(max_tokens)
    name = os.fspath(model) if model is not None else default_model()
    if Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().absolute())
    return rerank_items(get_engine(name, precision=precision), query, items, k, max_tokens=max_tokens)


def read_inputs(values: Sequence[str]) -> list[Any]:
    """The CLI's texts: each value a ``.jsonl`` file (a JSON string or record a line), another file (its
    text), or a text. A file that cannot be read, or a line that is not JSON, is a ConfigurationError naming it."""
    items: list[Any] = []
    for value in values:
        p = Path(value)
        if not p.is_file():
            items.append(value)
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read {value}: {exc}") from exc
        if p.suffix.lower() != ".jsonl":
            items.append(text)
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError as exc:
                    raise ConfigurationError(f"{value}, line {n}: not JSON ({exc})") from exc
    return items


def cli_rerank(indexer: Any, query: str, values: Sequence[str], k: int | None, *, as_json: bool) -> str:
    """``colbert-modal rerank``'s output: ``values`` (see :func:`read_inputs`) reranked by ``indexer``."""
    with indexer:
        hits = indexer.rerank(query, read_inputs(values), k=k)
    if as_json:
        return json.dumps([h.model_dump(mode="json") for h in hits], indent=2, ensure_ascii=False)
    return "\n".join(f"{h.rank}. {h.id or f'#{h.index}'}  score {h.score:.2f}  {' '.join(h.text.split())[:100]}"
                     for h in hits)
