"""The lean query encoder: a ColBERT checkpoint's BERT and linear head run in plain torch.

Searching an exact index needs only query embeddings. colbert-ai computes
them with ``Checkpoint.queryFromText``, but reaching it imports ragatouille
(LangChain, llama-index), colbert-ai and transformers: 7-8 s before the
first query, where ``import torch`` takes ~1.5 s. :class:`QueryEncoder`
computes the same embeddings from the checkpoint's files with torch, the
Rust ``tokenizers`` and ``safetensors`` only:

- settings from ``artifact.metadata`` (``query_maxlen``,
  ``attend_to_mask_tokens``, ``query_token_id``, ``dim``; colbert-ai's
  defaults where absent) and ``config.json``;
- tokenization as colbert-ai's ``QueryTokenizer.tensorize``: ``[CLS] text
  [SEP]`` truncated and padded to ``query_maxlen - 1`` tokens, the ``[Q]``
  marker (``[unused0]``) inserted after ``[CLS]``, padding replaced by
  ``[MASK]`` (query augmentation), attention to the ``[MASK]`` tokens only
  where ``attend_to_mask_tokens``; ``query_maxlen`` grows for long queries
  exactly as :meth:`~colbert_modal.engine.encoder.Encoder.encode_queries`
  always did (to the next multiple of 16 tokens, at most the model's
  ``max_position_embeddings - 4``);
- the BERT forward of transformers' ``BertModel`` (absolute positions,
  scaled-dot-product attention, post-LayerNorm), the linear head, the
  padding mask and L2 normalisation of ``ColBERT.query``, in the
  precision :mod:`~colbert_modal.engine.precision` resolves (the same
  autocast colbert-ai's encoder runs under).

Checkpoints it does not cover (not a BERT, no ``tokenizer.json``, custom
code, sharded or missing weights) raise :class:`UnsupportedCheckpoint`;
the caller then encodes with colbert-ai as before. ``tests/test_query_encoder.py``
checks the embeddings against colbert-ai's.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigurationError
from .precision import Autocast

__all__ = ["QueryEncoder", "QuerySettings", "UnsupportedCheckpoint", "default_device", "read_settings"]

#: colbert-ai's ``ColBERTConfig`` defaults for the fields the query encoder reads.
_COLBERT_DEFAULTS: dict[str, Any] = {
    "query_maxlen": 32,
    "attend_to_mask_tokens": False,
    "query_token_id": "[unused0]",
    "dim": 128,
}
_ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh")
_SPECIAL_DEFAULTS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
                     "unk_token": "[UNK]"}


class UnsupportedCheckpoint(Exception):
    """The checkpoint is outside what :class:`QueryEncoder` reproduces; encode with colbert-ai."""


class QuerySettings(NamedTuple):
    """What query encoding reads from a checkpoint's ``artifact.metadata`` and ``config.json``."""

    query_maxlen: int
    attend_to_mask_tokens: bool
    query_token_id: str
    dim: int
    #: the longest query ``query_maxlen`` may grow to (ragatouille's ``base_model_max_tokens``)
    max_tokens: int


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedCheckpoint(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise UnsupportedCheckpoint(f"{path}: not a JSON object")
    return data


def read_settings(path: str | os.PathLike[str]) -> QuerySettings:
    """The query settings of the checkpoint directory ``path`` (colbert-ai's defaults where absent)."""
    folder = Path(path)
    meta: dict[str, Any] = {}
    if (folder / "artifact.metadata").is_file():
        meta = _read_json(folder / "artifact.metadata")
        meta = meta.get("config", meta) if isinstance(meta.get("config"), dict) else meta
    cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}

    def get(key: str) -> Any:
        value = meta.get(key)
        return _COLBERT_DEFAULTS[key] if value is None else value

    return QuerySettings(
        query_maxlen=int(get("query_maxlen")),
        attend_to_mask_tokens=bool(get("attend_to_mask_tokens")),
        query_token_id=str(get("query_token_id")),
        dim=int(get("dim")),
        max_tokens=int(cfg.get("max_position_embeddings", 514)) - 4,
    )


def default_device() -> str:
    """Where colbert-ai would put the checkpoint: "cuda" where torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- tokenizer -----------------------------------------------------------------------


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_tokenizer(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's Rust tokenizer as transformers' ``BertTokenizerFast`` sets it up, and its settings."""
    from tokenizers import Tokenizer, normalizers

    if not (folder / "tokenizer.json").is_file():
        raise UnsupportedCheckpoint(f"{folder}: no tokenizer.json")
    conf = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if conf.get("tokenizer_class") not in (None, "BertTokenizer", "BertTokenizerFast"):
        raise UnsupportedCheckpoint(f"{folder}: tokenizer class {conf.get('tokenizer_class')!r}")
    specials = {k: _token_name(conf.get(k)) or v for k, v in _SPECIAL_DEFAULTS.items()}
    if (folder / "special_tokens_map.json").is_file():  # transformers lets it override tokenizer_config.json
        for k, v in _read_json(folder / "special_tokens_map.json").items():
            name = _token_name(v)
            if k in specials and name:
                specials[k] = name
    try:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # the Rust library raises its own Exception type
        raise UnsupportedCheckpoint(f"{folder / 'tokenizer.json'}: {exc}") from exc
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    extra = {_token_name(v) for v in (conf.get("added_tokens_decoder") or {}).values()} - added
    if extra - {None}:
        raise UnsupportedCheckpoint(f"{folder}: tokenizer_config.json adds tokens {sorted(map(str, extra))}")
    # BertTokenizerFast rebuilds the normalizer from tokenizer_config.json's settings
    norm = tok.normalizer
    if norm is not None:
        state = json.loads(norm.__getstate__())
        want = {"lowercase": conf.get("do_lower_case", True), "strip_accents": conf.get("strip_accents"),
                "handle_chinese_chars": conf.get("tokenize_chinese_chars", True)}
        if any(state.get(k, v) != v for k, v in want.items()):
            kind = state.pop("type")
            tok.normalizer = getattr(normalizers, kind)(**{**state, **want})
    tok.no_truncation()
    tok.no_padding()
    settings = {
        "specials": specials,
        "truncation_side": conf.get("truncation_side", "right"),
        "padding_side": conf.get("padding_side", "right"),
    }
    return tok, settings


# --- weights and the BERT forward -------------------------------------------------------


def _load_weights(folder: Path) -> dict[str, Any]:
    import torch

    try:
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        else:
            raise UnsupportedCheckpoint(f"{folder}: no model.safetensors or pytorch_model.bin")
    except UnsupportedCheckpoint:
        raise
    except Exception as exc:  # safetensors' own error type, pickle errors: colbert-ai's load reports them
        raise UnsupportedCheckpoint(f"{folder}: weights unreadable ({type(exc).__name__}: {exc})") from exc
    return dict(state)


def _bert_weights(state: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
    """``state``'s BERT weights under transformers' ``BertModel`` names (``bert.`` prefix dropped)."""
    out: dict[str, Any] = {}
    prefixed = any(k.startswith("bert.") for k in state)
    for key, value in state.items():
        if prefixed:
            if not key.startswith("bert."):
                continue
            key = key[len("bert."):]
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    need = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            need += [p + name + ".weight", p + name + ".bias"]
    missing = [k for k in need if k not in out]
    if missing:
        raise UnsupportedCheckpoint(f"weights missing: {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return {k: out[k] for k in need}


def quantize_linears(layers: Mapping[str, tuple[Any, Any]]) -> Any:
    """A ``ModuleDict`` of int8 dynamically quantized Linear layers (``quantize_dynamic``, weights per
    output channel), one per
    ``name: (weight, bias or None)``; keys are the names with "_" for ".". The float weights are not changed."""
    import warnings

    import torch
    from torch import nn

    modules = nn.ModuleDict()
    for name, (weight, bias) in layers.items():
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        layer.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
        modules[name.replace(".", "_")] = layer
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (torch >= 2.10)
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # per output channel: per-tensor scales moved MiniLM's query vectors twice as far (cosine 0.87 vs 0.95)
        return quantize_dynamic(modules, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


class _Bert:
    """transformers' ``BertModel`` forward (encoder only, inference) over a dict of weights."""

    def __init__(self, weights: dict[str, Any], config: Mapping[str, Any]) -> None:
        self.w = weights
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.act = str(config.get("hidden_act", "gelu"))
        #: the Linear layers dynamically quantized to int8 (:meth:`quantize`), by name with "_" for "."
        self.quantized: Any = None

    def quantize(self) -> None:
        """Run every Linear layer (attention, feed-forward) as a dynamically quantized int8 layer."""
        self.quantized = quantize_linears({
            p + name: (self.w[p + name + ".weight"], self.w[p + name + ".bias"])
            for p in (f"encoder.layer.{i}." for i in range(self.layers))
            for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "intermediate.dense", "output.dense")
        })

    def _activation(self, x: Any) -> Any:
        import math

        import torch
        import torch.nn.functional as F

        if self.act == "gelu":
            return F.gelu(x)
        if self.act == "gelu_pytorch_tanh":
            return F.gelu(x, approximate="tanh")
        if self.act == "gelu_new":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        if self.act == "relu":
            return F.relu(x)
        return F.silu(x)

    def __call__(self, ids: Any, attention: Any) -> Any:
        import torch
        import torch.nn.functional as F

        w = self.w
        b, n = ids.shape
        ln = (w["embeddings.LayerNorm.weight"].shape[0],)
        h = F.embedding(ids, w["embeddings.word_embeddings.weight"])
        h = h + F.embedding(torch.zeros_like(ids), w["embeddings.token_type_embeddings.weight"])
        h = h + F.embedding(torch.arange(n, device=ids.device)[None, :], w["embeddings.position_embeddings.weight"])
        h = F.layer_norm(h, ln, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        mask = None
        if not bool(torch.all(attention == 1)):  # transformers drops an all-ones mask too
            inverted = 1.0 - attention[:, None, None, :].to(h.dtype)
            mask = inverted.masked_fill(inverted.to(torch.bool), torch.finfo(h.dtype).min)
        heads = self.heads
        size = h.shape[-1] // heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(x: Any, name: str, p: str = p) -> Any:
                if self.quantized is not None:
                    return self.quantized[(p + name).replace(".", "_")](x)
                return F.linear(x, w[p + name + ".weight"], w[p + name + ".bias"])

            q, k, v = (lin(h, f"attention.self.{x}").view(b, -1, heads, size).transpose(1, 2)
                       for x in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(b, n, heads * size)
            a = F.layer_norm(lin(a, "attention.output.dense") + h, ln, w[p + "attention.output.LayerNorm.weight"],
                             w[p + "attention.output.LayerNorm.bias"], self.eps)
            x = self._activation(lin(a, "intermediate.dense"))
            h = F.layer_norm(lin(x, "output.dense") + a, ln, w[p + "output.LayerNorm.weight"],
                             w[p + "output.LayerNorm.bias"], self.eps)
        return h


def _check_config(folder: Path, config: Mapping[str, Any]) -> None:
    why = None
    if config.get("model_type") != "bert":
        why = f"model_type {config.get('model_type')!r}"
    elif config.get("auto_map"):
        why = "custom model code (auto_map)"
    elif config.get("position_embedding_type", "absolute") != "absolute":
        why = f"position_embedding_type {config.get('position_embedding_type')!r}"
    elif config.get("is_decoder") or config.get("add_cross_attention"):
        why = "a decoder"
    elif config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        why = f"hidden_act {config.get('hidden_act')!r}"
    if why:
        raise UnsupportedCheckpoint(f"{folder}: {why}")


# --- the encoder ------------------------------------------------------------------------


class QueryEncoder:
    """Query embeddings of one checkpoint, as colbert-ai's ``Checkpoint.queryFromText`` computes them.

    ``precision`` is what :func:`~colbert_modal.engine.precision.resolve_precision`
    returned ("fp32", "bf16", "native": float16 autocast on CUDA, as
    colbert-ai, or "int8": the Linear layers dynamically quantized, CPU only). ``weights``: the checkpoint's state dict (``bert.*`` and
    ``linear.weight``) where it is loaded already (shared, not copied);
    by default read from the checkpoint's files. Raises
    :class:`UnsupportedCheckpoint` for checkpoints it does not reproduce.
    Thread-safe.
    """

    #: Queries per forward pass (colbert-ai's ``queryFromText(bsize=64)``).
    bsize = 64

    def __init__(
        self, path: str | os.PathLike[str], *, precision: str = "fp32", device: str | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        import torch

        folder = Path(path)
        config = _read_json(folder / "config.json")
        _check_config(folder, config)
        self.path = folder
        self.settings = read_settings(folder)
        self.precision = precision
        self.device = device or default_device()
        if precision == "int8" and self.device != "cpu":
            raise ConfigurationError(f"precision 'int8' runs on a CPU only, not on {self.device!r}")
        self._tok, tok_settings = _load_tokenizer(folder)
        specials = tok_settings["specials"]
        ids = {k: self._tok.token_to_id(v) for k, v in specials.items()}
        for k in ("cls_token", "sep_token", "pad_token", "mask_token"):
            if ids[k] is None:
                raise UnsupportedCheckpoint(f"{folder}: {specials[k]!r} is not in the vocabulary")
        self._ids = ids
        self._pad_token = specials["pad_token"]
        marker = self._tok.token_to_id(self.settings.query_token_id)
        self.marker_id = marker if marker is not None else ids["unk_token"]
        if self.marker_id is None:
            raise UnsupportedCheckpoint(f"{folder}: no {self.settings.query_token_id!r} token")
        self._sides = (tok_settings["truncation_side"], tok_settings["padding_side"])
        self._sized: dict[int, Any] = {}  # tokenizers set to truncate and pad at one length
        self._lock = threading.Lock()
        state = dict(weights) if weights is not None else _load_weights(folder)
        if "linear.weight" not in state:
            raise UnsupportedCheckpoint(f"{folder}: weights missing: ['linear.weight']")
        bert = _bert_weights(state, int(config["num_hidden_layers"]))

        def place(t: Any) -> Any:
            return t.detach().to(self.device, torch.float32)

        self._bert = _Bert({k: place(v) for k, v in bert.items()}, config)
        self._linear = place(state["linear.weight"])
        #: the head's output size (ColBERT's ``dim``)
        self.dim = int(self._linear.shape[0])
        self._head: Any = None  # the int8 head, where precision is "int8"
        if precision == "int8":
            self._bert.quantize()
            self._head = quantize_linears({"linear": (self._linear, None)})["linear"]

    # --- tokenization ---------------------------------------------------------

    def query_maxlen(self, queries: Sequence[str]) -> int:
        """The query length a batch is padded to: ``query_maxlen``, longer for long queries."""
        encs = self._tok.encode_batch(list(queries), add_special_tokens=False)
        longest = max(len(e.ids) for e in encs) + 2
        base = self.settings.query_maxlen
        return min(max(base, ((longest + 15) // 16) * 16), self.settings.max_tokens)

    def _tokenizer(self, length: int) -> Any:
        with self._lock:
            tok = self._sized.get(length)
            if tok is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(self._tok.to_str())
                trunc_side, pad_side = self._sides
                tok.enable_truncation(max_length=length, strategy="longest_first", direction=trunc_side)
                tok.enable_padding(length=length, direction=pad_side, pad_id=self._ids["pad_token"],
                                   pad_token=self._pad_token)
                self._sized[length] = tok
            return tok

    def tensorize(self, queries: Sequence[str], maxlen: int) -> tuple[Any, Any]:
        """colbert-ai's ``QueryTokenizer.tensorize``: (input ids, attention mask), int64 [n, maxlen]."""
        import numpy as np

        encs = self._tokenizer(maxlen - 1).encode_batch(list(queries), add_special_tokens=True)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        att = np.array([e.attention_mask for e in encs], dtype=np.int64)
        n = len(queries)
        ids = np.concatenate([ids[:, :1], np.full((n, 1), self.marker_id, dtype=np.int64), ids[:, 1:]], axis=1)
        att = np.concatenate([att[:, :1], np.ones((n, 1), dtype=np.int64), att[:, 1:]], axis=1)
        ids[ids == self._ids["pad_token"]] = self._ids["mask_token"]
        if self.settings.attend_to_mask_tokens:
            att[ids == self._ids["mask_token"]] = 1
        return ids, att

    # --- encoding -------------------------------------------------------------

    def _autocast(self) -> Any:
        import torch

        if self.precision == "native" and self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)  # colbert-ai's MixedPrecisionManager
        if self.precision == "bf16":
            return Autocast(self.device, "bf16").context()
        return contextlib.nullcontext()

    def query(self, ids: Any, attention: Any) -> Any:
        """colbert-ai's ``ColBERT.query`` on device tensors: BERT, linear head, padding mask, L2 normalisation."""
        import torch.nn.functional as F

        h = self._bert(ids, attention)
        Q = self._head(h) if self._head is not None else F.linear(h, self._linear)
        mask = (ids != self._ids["pad_token"]).unsqueeze(2).float()
        return F.normalize(Q * mask, p=2, dim=2)

    def forward(self, ids: Any, attention: Any) -> Any:
        """:meth:`query` on tokenized queries (torch int64 tensors) in the precision, as
        colbert-ai's ``Checkpoint.query``: embeddings [n, len, dim] on the device."""
        import torch

        with torch.inference_mode(), self._autocast():
            return self.query(ids.to(self.device), attention.to(self.device))

    def encode(self, queries: Sequence[str]) -> Any:
        """Query embeddings, float32 torch tensor on the CPU [n_queries, query length, dim]."""
        import torch

        queries = list(queries)
        if not queries:
            return torch.zeros((0, self.settings.query_maxlen, self.dim), dtype=torch.float32)
        ids, att = self.tensorize(queries, self.query_maxlen(queries))
        ids_t, att_t = torch.from_numpy(ids), torch.from_numpy(att)
        parts = [self.forward(ids_t[s : s + self.bsize], att_t[s : s + self.bsize]).cpu()
                 for s in range(0, len(queries), self.bsize)]
        return torch.cat(parts).float()
