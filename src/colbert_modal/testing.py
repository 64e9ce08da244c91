"""Test helpers: a tiny ColBERT checkpoint written to disk, no downloads.

Use it in your own test suite (the fixtures are registered as a pytest plugin
when colbert-modal is installed)::

    def test_my_app(colbert_checkpoint, tmp_path):
        idx = ColbertIndexer("docs", model=colbert_checkpoint, index_root=tmp_path)
        idx.index(["tests/data"])
        assert idx.search("refund policy")

Or without pytest: ``colbert_modal.testing.write_tiny_checkpoint(path)``.

The checkpoint is a real ColBERT checkpoint in the format colbert-ai and
ragatouille load (BertConfig, ``model.safetensors`` with ``bert.*`` and
``linear.weight``, a WordPiece vocabulary with the ``[unused0]``/``[unused1]``
query/document markers, a ``tokenizer.json`` that switches truncation and
padding on at 128 tokens as sentence-transformers saves do, and an
``artifact.metadata`` with the full ColBERTConfig). With ``lexical=True`` (the default) the encoder is made
"lexical": attention and feed-forward outputs, position and token-type
embeddings and the ``[MASK]`` row are zeroed, so every output vector depends
only on its own token. MaxSim then counts the query tokens present in a
passage, which gives keyword queries a known right answer. Rankings of a real
model are of course better; this one exists so tests can assert on them.

Needs the ``local`` extra (torch, transformers, colbert-ai).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "BASE_WORDS",
    "colbert_checkpoint",
    "colbert_indexer",
    "write_tiny_checkpoint",
]

SPECIAL_TOKENS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: Words that become whole tokens in the tiny vocabulary (others split into characters).
BASE_WORDS = """
the of and to in a is that for it as was with be by on not he i this are or his from at which
but have an they you were her she there one all we their has been if more when will would who
so no out up what about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came
right used take three search index document page file text pdf query result results score rank
chunk data model children dosage dose medicine treatment patient patients adult adults child
federal register rule agency notice section court justice case law public comment comments
rate rates price prices market report information program programs health care service services
geometry topology space spaces set sets function functions theorem proof point points line lines
alpha beta gamma delta apple banana cherry zebra yellow orange purple quantum kernel volume gpu
modal colbert retrieval neural network networks token tokens vector vectors embedding embeddings
lorem ipsum dolor sit amet consectetur adipiscing elit sed eiusmod tempor incididunt labore dolore
magna aliqua enim minim veniam quis nostrud exercitation ullamco laboris nisi aliquip commodo
""".split()


def _vocab(extra_words: Iterable[str] = ()) -> list[str]:
    vocab: list[str] = list(SPECIAL_TOKENS)
    seen = set(vocab)

    def add(tok: str) -> None:
        if tok and tok not in seen:
            seen.add(tok)
            vocab.append(tok)

    # Every ASCII punctuation character is a token: colbert-ai builds its
    # punctuation skiplist from them.
    for ch in string.punctuation + string.digits + string.ascii_lowercase:
        add(ch)
    for ch in string.digits + string.ascii_lowercase:
        add("##" + ch)
    for ch in "äöüßéèàçñ":
        add(ch)
        add("##" + ch)
    for word in list(BASE_WORDS) + [w.lower() for w in extra_words]:
        if word.isalnum():
            add(word)
    return vocab


def write_tiny_checkpoint(
    path: str | os.PathLike[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    dim: int = 128,
    lexical: bool = True,
    extra_words: Iterable[str] = (),
    seed: int = 0,
) -> Path:
    """Write a small, loadable ColBERT checkpoint to ``path`` and return it.

    The defaults give a ~1 MB model that encodes quickly on a CPU. Pass
    ``hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072``
    for a random model that costs what colbertv2.0 costs (benchmarks).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(path).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)

    vocab = _vocab(extra_words)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(out))  # tokenizer.json, tokenizer_config.json, special_tokens_map.json
    _truncate_and_pad(out / "tokenizer.json", TOKENIZER_FILE_LIMIT)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    )
    config.architectures = ["HF_ColBERT"]
    torch.manual_seed(seed)
    bert: Any = BertModel(config, add_pooling_layer=True)
    linear = torch.nn.Linear(hidden_size, dim, bias=False)
    with torch.no_grad():
        torch.nn.init.normal_(bert.embeddings.word_embeddings.weight, std=1.0)
        if lexical:
            mask_id = vocab.index("[MASK]")
            emb = bert.embeddings
            emb.position_embeddings.weight.zero_()
            emb.token_type_embeddings.weight.zero_()
            emb.word_embeddings.weight[mask_id].zero_()
            for ln in _layer_norms(bert):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
            for layer in bert.encoder.layer:
                for proj in (layer.attention.output.dense, layer.output.dense):
                    proj.weight.zero_()
                    proj.bias.zero_()
        torch.nn.init.normal_(linear.weight, std=hidden_size**-0.5)

    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))

    (out / "artifact.metadata").write_text(
        json.dumps(_colbert_metadata(out, dim=dim), indent=2) + "\n", encoding="utf-8"
    )
    return out


#: Where the checkpoint's ``tokenizer.json`` truncates and pads: as sentence-transformers
#: saves do (at 128 tokens), so every test sees a checkpoint as odd as real ones.
TOKENIZER_FILE_LIMIT = 128


def _truncate_and_pad(tokenizer_json: Path, limit: int) -> None:
    """Switch truncation and padding on in ``tokenizer_json``, as sentence-transformers' saves have them."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    data["truncation"] = {"direction": "Right", "max_length": limit, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {
        "strategy": {"Fixed": limit}, "direction": "Right", "pad_to_multiple_of": None,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]",
    }
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _layer_norms(bert: Any) -> Iterator[Any]:
    import torch

    for module in bert.modules():
        if isinstance(module, torch.nn.LayerNorm):
            yield module


def _colbert_metadata(path: Path, *, dim: int) -> dict[str, object]:
    """The full ColBERTConfig field set, as real checkpoints ship it.

    Every field must be present: with ``root`` missing, ragatouille drops the
    ``index_root`` it was given and searches under ``./experiments/``.
    ``model_name`` stays None so colbert-ai loads the local directory and
    never asks the hub.
    """
    from .engine import colbert_config

    data = colbert_config(
        dim=dim,
        query_maxlen=32,
        doc_maxlen=256,
        similarity="cosine",
        attend_to_mask_tokens=False,
        checkpoint=str(path),
        model_name=None,
        root=str(path / "experiments"),
    )
    data["model_name"] = None
    data["meta"] = {"version": "colbert-v0.4", "written_by": "colbert_modal.testing"}
    return data


# --- pytest fixtures -------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for the library
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def colbert_checkpoint_words() -> list[str]:
        """Extra whole-word tokens for :func:`colbert_checkpoint`'s vocabulary.

        Override it (session scope) in your ``conftest.py`` with the words your
        test queries use, so they are single tokens rather than characters.
        """
        return []

    @pytest.fixture(scope="session")
    def colbert_checkpoint(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint_words: list[str]) -> Path:
        """A tiny lexical ColBERT checkpoint, written once per test session
        (with :func:`colbert_checkpoint_words` in its vocabulary)."""
        return write_tiny_checkpoint(
            tmp_path_factory.mktemp("colbert-checkpoint") / "tiny-colbert", extra_words=colbert_checkpoint_words
        )

    @pytest.fixture
    def colbert_indexer(colbert_checkpoint: Path, tmp_path: Path):
        """A ``ColbertIndexer`` on the tiny checkpoint, with its index root in ``tmp_path``."""
        from colbert_modal import ColbertIndexer

        return ColbertIndexer("test-index", model=colbert_checkpoint, index_root=tmp_path / "indexes")
