"""The encoders: precision (``precision=`` / ``$COLBERT_MODAL_PRECISION``), batching, exact scoring."""

from __future__ import annotations

from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer, ConfigurationError
from colbert_modal import engine as engine_mod
from colbert_modal.engine import check_precision, encoder, resolve_precision
from colbert_modal.engine import precision as precision_mod

# --- settings (no model) ---------------------------------------------------------


def test_check_precision_default_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_precision(None) == "auto"
    monkeypatch.setenv("COLBERT_MODAL_PRECISION", "fp32")
    assert check_precision(None) == "fp32"
    assert check_precision("bf16") == "bf16"  # the argument wins over the environment
    with pytest.raises(ConfigurationError, match=r"precision must be one of .*'fp16'"):
        check_precision("fp16")
    monkeypatch.setenv("COLBERT_MODAL_PRECISION", "half")
    with pytest.raises(ConfigurationError, match=r"\$COLBERT_MODAL_PRECISION .*'half'"):
        ColbertIndexer("x")


@pytest.mark.parametrize(
    ("asked", "device", "amx", "backend", "expected"),
    [
        ("auto", "cuda", True, "exact", "native"),  # colbert-ai's float16 autocast on a GPU
        ("auto", "cuda", True, "plaid", "native"),
        ("auto", "cpu", True, "exact", "bf16"),
        ("auto", "cpu", True, "plaid", "fp32"),  # PLAID's compression + bf16 ranks worse than raw
        ("auto", "cpu", False, "exact", "fp32"),
        ("fp32", "cpu", True, "exact", "fp32"),
        ("bf16", "cpu", False, "exact", "bf16"),
        ("bf16", "cpu", True, "plaid", "bf16"),  # asked for explicitly
        ("fp32", "cuda", True, "exact", "fp32"),
        ("bf16", "cuda", False, "plaid", "bf16"),
    ],
)
def test_resolve_precision(
    monkeypatch: pytest.MonkeyPatch, asked: str, device: str, amx: bool, backend: str, expected: str
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: amx)
    assert resolve_precision(asked, device, backend=backend) == expected


def test_cpu_probe_answers() -> None:
    assert isinstance(precision_mod.cpu_has_fast_bf16(), bool)


# --- the real encoder ----------------------------------------------------------


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint with random weights: its embeddings have many significant digits."""
    from colbert_modal.testing import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "random", lexical=False)


def _record_autocast(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the CPU autocast dtype inside each encoder forward (colbert-ai's ColBERT.doc/query,
    the lean query encoder's ``query``)."""
    import torch
    from colbert.modeling.colbert import ColBERT

    from colbert_modal.engine.query_encoder import QueryEncoder

    seen: list[str] = []
    for cls, name in ((ColBERT, "doc"), (ColBERT, "query"), (QueryEncoder, "query")):
        original = getattr(cls, name)

        def forward(self, *a, _original=original, **k):
            seen.append(str(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else "off")
            return _original(self, *a, **k)

        monkeypatch.setattr(cls, name, forward)
    return seen


def test_forced_precisions_reach_the_encoder(random_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    seen = _record_autocast(monkeypatch)
    texts = ["the walrus and the penguin", "a meteor over the glacier at night"] * 3
    fp32 = engine_mod.Engine(random_checkpoint, precision="fp32")
    bf16 = engine_mod.Engine(random_checkpoint, precision="bf16")
    assert (fp32.resolved_precision, bf16.resolved_precision) == ("fp32", "bf16")

    e32, d32 = fp32.encode_documents(texts, max_tokens=32)
    assert set(seen) == {"off"}
    seen.clear()
    e16, d16 = bf16.encode_documents(texts, max_tokens=32)
    assert set(seen) == {"torch.bfloat16"}
    assert e16.dtype == e32.dtype == np.float16 and np.array_equal(d16, d32)
    # bfloat16 really ran (results differ) and stays close to float32
    assert not np.array_equal(e16, e32)
    cos = (e16.astype(np.float32) * e32.astype(np.float32)).sum(1)  # unit vectors
    assert cos.min() > 0.99

    seen.clear()
    q32, q16 = fp32.encode_queries(["walrus penguin"]), bf16.encode_queries(["walrus penguin"])
    assert seen == ["off", "torch.bfloat16"]
    assert q16.dtype == q32.dtype and float((q16 * q32).sum(-1)[q32.norm(dim=-1) > 0].min()) > 0.99


def test_indexer_precision_gives_the_same_answers(
    colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_autocast(monkeypatch)
    answers = {}
    for precision in ("fp32", "bf16"):
        idx = ColbertIndexer(f"p-{precision}", model=colbert_checkpoint, index_root=tmp_path, progress=False,
                             precision=precision)
        idx.index([corpus_dir / "notes", corpus_dir / "bestiary.pdf"])
        hits = idx.search_batch(["umbrella volcano walrus", "meteor glacier harbour"], k=2)
        answers[precision] = [[(Path(h.source).name, h.pages) for h in r] for r in hits]
        for r in hits:
            assert r[0].score > 0
    assert answers["fp32"] == answers["bf16"]
    assert answers["bf16"][0][0] == ("bestiary.pdf", [2]) and answers["bf16"][1][0][0] == "meteor.md"
    assert {"off", "torch.bfloat16"} <= set(seen)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "expected"), [("bf16", "torch.bfloat16"), ("auto", "off")])
def test_plaid_build_precision(
    colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    precision: str, expected: str,
) -> None:
    """PLAID builds encode in bfloat16 only when asked to; ``auto`` keeps float32 on a CPU."""
    seen = _record_autocast(monkeypatch)
    idx = ColbertIndexer(f"plaid-{precision}", model=colbert_checkpoint, index_root=tmp_path, backend="plaid",
                         progress=False, precision=precision)
    idx.index([corpus_dir / "bestiary.pdf", corpus_dir / "atlas.pdf"])
    build = list(seen)
    assert build and set(build) == {expected}  # one encoding pass, reused for the k-means sample
    hits = idx.search("umbrella volcano walrus", k=1)
    assert Path(hits[0].source).name == "bestiary.pdf" and hits[0].pages == [2]


def test_exact_index_float16_layout_ranks_like_float32(random_checkpoint: Path, tmp_path: Path) -> None:
    """On a GPU the exact index holds float16 embeddings on the device; the
    same code runs here on the CPU with dtype=float16 and must agree with float32."""
    import torch

    eng = engine_mod.Engine(random_checkpoint, precision="fp32")
    texts = [f"the {w} and the {v} of the world" for w in ("walrus", "penguin", "meteor", "glacier")
             for v in ("harbour", "lantern", "volcano")]
    eng.build_exact(texts, tmp_path / "e", max_tokens=32)
    f32 = engine_mod.ExactIndex(eng, tmp_path / "e")
    f16 = engine_mod.ExactIndex(eng, tmp_path / "e", device="cpu", dtype=torch.float16)
    assert {g.dtype for _, g in f32._groups} == {torch.float32}
    assert {g.dtype for _, g in f16._groups} == {torch.float16}
    f16.block_elements = 64 * 32 * 3  # several blocks, so the running max across blocks is exercised
    queries = ["walrus harbour", "glacier volcano", "penguin lantern world"]
    a, b = f32.search(queries, k=5), f16.search(queries, k=5)
    for ha, hb in zip(a, b):
        assert ha[0][0] == hb[0][0]
        for (_, sa), (_, sb) in zip(ha, hb):
            assert abs(sa - sb) < 1e-2 * abs(sa)


def test_batch_sizes_follow_the_device(random_checkpoint: Path) -> None:
    eng = engine_mod.Engine(random_checkpoint)
    assert eng.device == "cpu" and eng.doc_bsize == 32 and eng.encode_step == 256
    assert encoder.doc_bsize("cuda") == 512


def test_exact_scores_are_brute_force_maxsim(random_checkpoint: Path, tmp_path: Path) -> None:
    """The length-grouped, self-padded layout scores exactly like MaxSim over each chunk's own tokens."""
    import numpy as np
    import torch

    eng = engine_mod.Engine(random_checkpoint, precision="fp32")
    words = "walrus penguin meteor glacier harbour lantern volcano world state people".split()
    texts = [" ".join(words[: 1 + i % len(words)] * (1 + i // 3)) for i in range(17)]  # 3 to ~60 tokens
    eng.build_exact(texts, tmp_path / "e", max_tokens=500)  # nothing cut: every token scores
    idx = engine_mod.ExactIndex(eng, tmp_path / "e")
    assert len(idx._groups) > 2  # several group lengths, most chunks padded
    E = np.load(tmp_path / "e" / "embeddings.npy").astype(np.float32)
    lens = np.load(tmp_path / "e" / "doclens.npy")
    offs = np.concatenate([[0], np.cumsum(lens)])
    Q = eng.encode_queries(["walrus harbour", "volcano people world"])
    got = idx._scores(Q)
    for qi in range(Q.shape[0]):
        q = Q[qi].numpy()
        want = [float((q @ E[offs[d] : offs[d + 1]].T).max(1).sum()) for d in range(len(texts))]
        assert np.allclose(got[qi].numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.tensor(idx.doclens), torch.tensor(lens, dtype=torch.int64))


def test_document_encoding_matches_colbert_ai(random_checkpoint: Path) -> None:
    """Our tokenization, batching and vectorised mask give colbert-ai's ``docFromText`` embeddings."""
    import types

    import numpy as np
    import torch
    from colbert.modeling.colbert import ColBERT

    eng = engine_mod.Engine(random_checkpoint, precision="fp32")
    texts = [
        "", "x", "Hello, world!", "naïve café — déjà vu? 123-456.", "the walrus. The penguin; the meteor!",
        " ".join(["glacier"] * 40),  # long (nothing is cut: a passage over the window is an error)
        "state of the world " * 5, "((( ))) ... !!!", "a\nb\tc",
    ] * 3
    fast_e, fast_d = eng.encode_documents(texts, max_tokens=500, bsize=4)

    ckpt = eng.checkpoint
    ckpt.mask = types.MethodType(ColBERT.mask, ckpt)  # colbert-ai's own per-token mask
    try:
        with torch.inference_mode():
            ref_e, ref_d = ckpt.docFromText(texts, bsize=4, keep_dims="flatten")
    finally:
        del ckpt.mask
        encoder.speed_up(ckpt)
    assert fast_d.tolist() == list(ref_d)
    assert fast_e.shape == tuple(ref_e.shape)
    np.testing.assert_allclose(fast_e.astype(np.float32), ref_e.numpy(), atol=2e-3)
    # the vectorised mask is colbert-ai's mask
    ids = torch.tensor([[101, 1, 1010, 2000, 0, 0], [101, 1012, 999, 5, 102, 0]])
    want = ColBERT.mask(ckpt, ids, skiplist=ckpt.skiplist)
    assert encoder.vectorised_mask(ckpt, ids, ckpt.skiplist).tolist() == want
    assert encoder.vectorised_mask(ckpt, ids, []).tolist() == ColBERT.mask(ckpt, ids, skiplist=[])


def test_segmented_maxsim_extension_compiles_only_when_called(random_checkpoint: Path) -> None:
    """Loading a model no longer compiles colbert-ai's CPU extension; its first call does."""
    import torch
    from colbert.modeling.colbert import ColBERT

    engine_mod.Engine(random_checkpoint).checkpoint  # noqa: B018 - loads the model
    lazy = ColBERT.__dict__["segmented_maxsim"]
    if isinstance(lazy, staticmethod):  # not yet compiled in this test session
        assert lazy.__func__.__name__ == "segmented_maxsim"
    # [tokens of 2 docs (3 + 2), query tokens 2] -> per doc: sum over query tokens of the max
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.4], [0.7, 0.1], [0.2, 0.8]])
    out = ColBERT.segmented_maxsim(scores, torch.tensor([3, 2]))
    assert torch.allclose(out, torch.tensor([0.5 + 0.9, 0.7 + 0.8]))
    assert not isinstance(ColBERT.__dict__["segmented_maxsim"], staticmethod)  # the compiled one now


def test_a_passage_longer_than_the_window_is_an_error_not_a_cut(random_checkpoint: Path) -> None:
    """The planner makes chunks that fit; should one not (another tokenizer, a bug), encoding refuses to cut it."""
    from colbert_modal.errors import EngineError

    eng = engine_mod.Engine(random_checkpoint, precision="fp32")
    fits = "walrus"
    eng.encode_documents([fits], max_tokens=32)
    with pytest.raises(EngineError, match="passage 1 has more than 32 tokens.*would be cut"):
        eng.encode_documents([fits, " ".join(["walrus"] * 200)], max_tokens=32)
