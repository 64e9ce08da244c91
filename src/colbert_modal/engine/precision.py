"""Precision of the encoders: the setting, what it resolves to, the autocast applying it, the device probe.

``precision=`` or ``$COLBERT_MODAL_PRECISION``:

``auto`` (the default)
    On a CUDA GPU, colbert-ai's own mixed precision (float16 autocast). On a
    CPU with AMX tiles (Intel Xeon 4th generation, "Sapphire Rapids", and
    later), bfloat16 autocast for exact indexes and for queries: oneDNN runs
    the encoder's matrix products on the tiles, ~2.5x faster than float32
    for batches (documents, query batches), the same for one short query.
    PLAID builds on a CPU and all encoding on other CPUs stay float32.
``fp32`` / ``bf16``
    Force float32 or bfloat16 autocast on any device.

Embeddings are stored as float16 either way; bfloat16 keeps 8 bits of
mantissa, so scores move in the third significant digit (see BENCHMARKS.md
for the effect on rankings). PLAID *searches* keep colbert-ai's precision.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..errors import ConfigurationError

__all__ = [
    "PRECISIONS",
    "Autocast",
    "check_precision",
    "checkpoint_device",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "set_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str | None) -> str:
    """``precision``, else ``$COLBERT_MODAL_PRECISION``, else ``"auto"``; validated."""
    value = precision or os.environ.get("COLBERT_MODAL_PRECISION") or "auto"
    if value not in PRECISIONS:
        where = "precision" if precision else "$COLBERT_MODAL_PRECISION"
        raise ConfigurationError(f"{where} must be one of {PRECISIONS}, got {value!r}")
    return value


def cpu_has_fast_bf16() -> bool:
    """True where this CPU has AMX tiles, on which oneDNN runs bfloat16 matmuls natively."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, AttributeError):  # pragma: no cover - older torch builds
        return False


def resolve_precision(precision: str | None, device: str, *, backend: str = "exact") -> str:
    """What the encoders run in on ``device`` ("cpu"/"cuda"): "fp32", "bf16" or "native".

    "native" leaves colbert-ai's own mixed precision (float16 autocast on CUDA).
    ``auto`` builds PLAID indexes on a CPU in float32: on top of PLAID's 2-bit
    residual compression, bfloat16 encodings measurably lowered top-10
    agreement with exact MaxSim below raw ragatouille's (BENCHMARKS.md,
    section 5); exact indexes and query encoding use bfloat16 where it is fast.
    """
    value = check_precision(precision)
    if value != "auto":
        return value
    if device != "cpu":
        return "native"
    if backend == "plaid":
        return "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


class Autocast:
    """Stands in for colbert-ai's ``MixedPrecisionManager`` on a ``Checkpoint``.

    colbert-ai wraps every encoder forward (``Checkpoint.query``/``doc``) in
    ``checkpoint.amp_manager.context()``; replacing that object on our own
    checkpoint instances sets the precision exactly there and nowhere else.
    """

    activated = True

    def __init__(self, device: str, precision: str) -> None:
        self.device = device
        self.precision = precision

    def context(self) -> Any:
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def checkpoint_device(ckpt: Any) -> str:
    """Where a colbert-ai ``Checkpoint`` (any torch module) runs: "cuda" or "cpu"."""
    try:
        return str(next(ckpt.parameters()).device.type)
    except (StopIteration, AttributeError):
        return "cpu"


def set_precision(ckpt: Any, precision: str | None, *, backend: str = "exact") -> str:
    """Apply ``precision`` to a colbert-ai ``Checkpoint``; returns what it resolved to."""
    device = checkpoint_device(ckpt)
    resolved = resolve_precision(precision, device, backend=backend)
    if resolved != "native":
        ckpt.amp_manager = Autocast(device, resolved)
    return resolved
