"""The lean query encoder (engine/query_encoder.py): colbert-ai's query embeddings without ragatouille.

Its embeddings are checked against colbert-ai's ``Checkpoint.queryFromText``
(through :meth:`Encoder.encode_queries_upstream`, the path searches took
before) on the tiny test checkpoint and on random MiniLM-sized and
BERT-base-sized ones; a fresh interpreter that opens and searches an exact
index must not import ragatouille, LangChain or colbert-ai.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.engine import Encoder, get_engine
from colbert_modal.engine.query_encoder import QueryEncoder
from colbert_modal.testing import write_tiny_checkpoint

QUERIES = [
    "hello world",
    "What does the printed text on page two mean?",
    "Ünïcödé café, naïve résumé: 42 (sic) [MASK]!",
    "aardvark " * 40,  # longer than query_maxlen: the query length grows to 48
    " ".join(["walrus"] * 600),  # past the model's 512 positions: truncated at 508
    "a",
]


def _same_embeddings(lean, old) -> None:
    import torch

    assert lean.shape == old.shape
    assert lean.dtype == old.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(lean, old, dim=-1)
    lean_zero, old_zero = lean.norm(dim=-1) == 0, old.norm(dim=-1) == 0
    assert bool((lean_zero == old_zero).all())  # the tiny checkpoint's [MASK] rows are zero vectors
    assert float(cos[~old_zero].min()) >= 0.999


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("query-encoder")
    minilm = write_tiny_checkpoint(root / "minilm", hidden_size=384, num_layers=6, num_heads=12,
                                   intermediate_size=1536, lexical=False, seed=1)
    # BERT-base's width (768 hidden, 12 heads, 3072 feed-forward) in 2 layers, to keep it quick
    base = write_tiny_checkpoint(root / "base", hidden_size=768, num_layers=2, num_heads=12,
                                 intermediate_size=3072, lexical=False, seed=2)
    # attention to the [MASK] padding, a shorter query_maxlen, a tanh GELU
    attend = write_tiny_checkpoint(root / "attend", hidden_size=64, num_heads=4, intermediate_size=128,
                                   lexical=False, seed=3)
    meta = json.loads((attend / "artifact.metadata").read_text(encoding="utf-8"))
    meta.update(attend_to_mask_tokens=True, query_maxlen=24)
    (attend / "artifact.metadata").write_text(json.dumps(meta), encoding="utf-8")
    config = json.loads((attend / "config.json").read_text(encoding="utf-8"))
    config["hidden_act"] = "gelu_new"
    (attend / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return {"tiny": colbert_checkpoint, "minilm": minilm, "base": base, "attend": attend}


@pytest.mark.parametrize(
    ("model", "precision"),
    [("tiny", "fp32"), ("minilm", "fp32"), ("base", "fp32"), ("attend", "fp32"), ("minilm", "bf16")],
)
def test_lean_query_embeddings_equal_colbert_ai(checkpoints: dict[str, Path], model: str, precision: str) -> None:
    engine = get_engine(checkpoints[model], precision=precision)
    assert isinstance(engine.query_encoder, QueryEncoder)
    lean = engine.encode_queries(QUERIES)
    assert lean.shape[1] == 508  # the 600-word query: truncated at max_position_embeddings - 4
    old = engine.encode_queries_upstream(QUERIES)
    _same_embeddings(lean, old)
    # a batch padded to colbert-ai's query_maxlen, and one query alone
    _same_embeddings(engine.encode_queries(QUERIES[:3]), engine.encode_queries_upstream(QUERIES[:3]))
    _same_embeddings(engine.encode_queries(["a"]), engine.encode_queries_upstream(["a"]))
    # once ragatouille holds the model, the lean encoder shares its weights
    shared = Encoder(checkpoints[model], precision=precision)
    shared._rag = engine.rag
    assert shared.query_encoder is not None
    _same_embeddings(shared.encode_queries(QUERIES), old)


def test_a_checkpoint_it_does_not_cover_is_encoded_by_colbert_ai(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "no-fast-tokenizer"
    shutil.copytree(checkpoints["tiny"], copy)
    (copy / "tokenizer.json").unlink()  # transformers builds one from vocab.txt; the lean encoder does not
    engine = Encoder(copy, precision="fp32")
    assert engine.query_encoder is None
    _same_embeddings(engine.encode_queries(QUERIES[:3]), engine.encode_queries_upstream(QUERIES[:3]))


SEARCH_QUERIES = ["aardvark bicycle", "penguin walrus umbrella", "meteor glacier harbour", "hello letters"]

_CHILD = """
import json, sys
from colbert_modal import ColbertIndexer
kwargs = json.loads(sys.argv[1])
idx = ColbertIndexer("shared", **kwargs)
hits = [[(r.chunk_id, round(r.score, 4)) for r in idx.search(q, k=5)] for q in json.loads(sys.argv[2])]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ragatouille", "langchain", "langchain_core", "colbert"))
print(json.dumps({"hits": hits, "heavy": heavy}))
"""


def test_searching_an_exact_index_imports_no_ragatouille_langchain_or_colbert(built_index) -> None:
    kwargs, _ = built_index
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(kwargs), json.dumps(SEARCH_QUERIES)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    idx = ColbertIndexer("shared", **kwargs)
    expected = [[[r.chunk_id, round(r.score, 4)] for r in idx.search(q, k=5)] for q in SEARCH_QUERIES]
    assert out["hits"] == expected


def test_search_results_are_those_of_colbert_ai_query_encoding(built_index, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs, _ = built_index
    idx = ColbertIndexer("shared", **kwargs)
    queries = [*SEARCH_QUERIES, "the state of the world"]
    lean = idx.search_batch(queries, k=8)
    monkeypatch.setattr(Encoder, "query_encoder", property(lambda self: None))  # the path searches took before
    old = ColbertIndexer("shared", **kwargs).search_batch(queries, k=8)
    for a, b in zip(lean, old, strict=True):
        assert [r.chunk_id for r in a] == [r.chunk_id for r in b]
        assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=1e-4)


def test_int8_query_encoder_stays_close_to_fp32(checkpoints: dict[str, Path]) -> None:
    import torch

    fp32 = QueryEncoder(checkpoints["minilm"], precision="fp32", device="cpu")
    int8 = QueryEncoder(checkpoints["minilm"], precision="int8", device="cpu")
    assert int8._head is not None and int8._bert.quantized is not None  # the Linear layers run in int8
    a, b = fp32.encode(QUERIES[:3]), int8.encode(QUERIES[:3])
    assert a.shape == b.shape and b.dtype == torch.float32
    assert not torch.equal(a, b)  # quantized: not the float computation
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.mean()) >= 0.9
    # the float weights it was built from are untouched
    assert torch.equal(fp32.encode(QUERIES[:3]), a)


def test_int8_is_refused_on_a_gpu(checkpoints: dict[str, Path]) -> None:
    from colbert_modal.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="CPU only"):
        QueryEncoder(checkpoints["tiny"], precision="int8", device="cuda")


def test_int8_search_ranks_the_tiny_index_as_fp32(built_index) -> None:
    kwargs, _ = built_index
    fp32 = ColbertIndexer("shared", **{**kwargs, "precision": "fp32"}).search_batch(SEARCH_QUERIES, k=3)
    idx = ColbertIndexer("shared", **{**kwargs, "precision": "int8"})
    int8 = idx.search_batch(SEARCH_QUERIES, k=3)
    lean = get_engine(kwargs["model"], precision="int8").query_encoder
    assert lean is not None and lean.precision == "int8" and lean._head is not None
    for a, b in zip(fp32, int8, strict=True):
        assert [r.chunk_id for r in a] == [r.chunk_id for r in b]
        assert [r.score for r in b] == pytest.approx([r.score for r in a], rel=0.05)
