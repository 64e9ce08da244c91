"""Model names to local checkpoint directories: the hub cache, then a download (no torch here)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError

__all__ = ["DEFAULT_MODEL", "resolve_hub_file", "resolve_model"]

#: The model used when neither the caller, the index nor ``$COLBERT_MODAL_MODEL`` names one.
DEFAULT_MODEL = "colbert-ir/colbertv2.0"

_OFFLINE_HINT = (
    "If this machine is offline, download the checkpoint once elsewhere "
    "(`huggingface-cli download {model} --local-dir ./colbertv2.0`) and pass "
    "model='/path/to/colbertv2.0', or set COLBERT_MODAL_MODEL to that directory."
)


def _hub_error(model: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not fetch model {model!r} from the Hugging Face hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        + _OFFLINE_HINT.format(model=model)
    )


def resolve_model(model: str | os.PathLike[str]) -> str:
    """Absolute path of a local checkpoint directory for ``model``.

    A local directory is returned as an absolute path (relative paths make
    colbert-ai try the hub first). A hub id is looked up in the local cache
    first, then downloaded; either way the result is a local snapshot
    directory, so colbert-ai never talks to the hub itself.
    """
    raw = os.fspath(model)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path.absolute()}: not a checkpoint directory (no config.json)")
        return str(path.absolute())
    if path.is_absolute() or raw.startswith((".", "~")) or raw.count("/") > 1:
        raise ModelLoadError(f"model {raw!r}: no such checkpoint directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("huggingface_hub is required to fetch models by name") from exc
    try:
        return snapshot_download(raw, local_files_only=True)
    except Exception:
        pass
    try:
        return snapshot_download(raw)
    except Exception as exc:
        raise _hub_error(raw, exc) from exc


def resolve_hub_file(model: str, filename: str) -> str:
    """Local path of one file of a hub model (cache first, then download)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("huggingface_hub is required to fetch models by name") from exc
    try:
        return hf_hub_download(model, filename, local_files_only=True)
    except Exception:
        pass
    try:
        return hf_hub_download(model, filename)
    except Exception as exc:
        raise _hub_error(model, exc) from exc
