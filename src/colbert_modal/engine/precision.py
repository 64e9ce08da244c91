"""Precision of the encoders: the setting, what it resolves to, the autocast applying it, the CPU's bf16 check.

``precision=`` or ``$COLBERT_MODAL_PRECISION``:

``auto`` (the default)
    On a CUDA GPU, colbert-ai's own mixed precision (float16 autocast). On a
    CPU whose bfloat16 matrix products are clearly faster than float32
    (:func:`cpu_has_fast_bf16`: AMX tiles, AVX-512 BF16, Arm BF16),
    bfloat16 autocast for exact indexes and for queries. PLAID builds on a
    CPU and all encoding on other CPUs stay float32.
``fp32`` / ``bf16``
    Force float32 or bfloat16 autocast on any device.
``int8``
    The lean query encoder's Linear layers dynamically quantized to int8
    (``torch.ao.quantization.quantize_dynamic``); documents (and queries
    colbert-ai encodes) as ``auto`` would. CPU only: on a GPU it is a
    :class:`~colbert_modal.errors.ConfigurationError` (torch's dynamic
    quantization has no CUDA kernels, and a silent fallback would hide that
    the setting does nothing there).

Embeddings are stored as float16 either way; bfloat16 keeps 8 bits of
mantissa, so scores move in the third significant digit (see BENCHMARKS.md
for the effect on rankings). PLAID *searches* keep colbert-ai's precision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigurationError

__all__ = [
    "PRECISIONS",
    "Autocast",
    "BF16Probe",
    "check_precision",
    "checkpoint_device",
    "cpu_bf16_flags",
    "cpu_has_fast_bf16",
    "decide_fast_bf16",
    "probe_bf16",
    "resolve_precision",
    "set_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_precision(precision: str | None) -> str:
    """``precision``, else ``$COLBERT_MODAL_PRECISION``, else ``"auto"``; validated."""
    value = precision or os.environ.get("COLBERT_MODAL_PRECISION") or "auto"
    if value not in PRECISIONS:
        where = "precision" if precision else "$COLBERT_MODAL_PRECISION"
        raise ConfigurationError(f"{where} must be one of {PRECISIONS}, got {value!r}")
    return value


logger = logging.getLogger(__name__)

#: bfloat16 counts as clearly faster when the probe's matmuls run at least this much faster than float32.
MIN_BF16_SPEEDUP = 1.3
#: What ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``) says about native bfloat16 matmuls.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


class BF16Probe(NamedTuple):
    """One measurement of :func:`probe_bf16`: seconds per matmul in each precision."""

    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The :data:`BF16_FLAGS` this CPU reports (``/proc/cpuinfo``; torch's own checks where that is absent)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found |= set(value.split()) & set(BF16_FLAGS)
            break
    if cpuinfo is None:
        import torch

        for flag, name in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
            check = getattr(torch.cpu, name, None)
            try:
                if check is not None and check():
                    found.add(flag)
            except (RuntimeError, AttributeError):  # pragma: no cover - older torch builds
                pass
    return found


def _cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "CPU part", "Hardware"):
            return value.strip()
    return platform.processor() or platform.machine()


def probe_bf16(*, budget_s: float = 0.4) -> BF16Probe:
    """Time a float32 and a bfloat16-autocast matmul of an encoder layer's shape on this CPU.

    ``[512, 768] x [768, 3072]`` (a BERT-base feed-forward, 2.4 GFLOP), as the
    encoders run it: float32 weights under ``torch.autocast``. A few runs of
    each, the best kept; stops early past ``budget_s`` (a CPU that emulates
    bfloat16 is many times slower, which the first runs already show).
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 768, generator=gen)
    w = torch.randn(3072, 768, generator=gen)
    start = time.perf_counter()
    best = {"fp32": float("inf"), "bf16": float("inf")}
    with torch.inference_mode():
        for name in ("fp32", "bf16") * 4:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
            t0 = time.perf_counter()
            with ctx:
                F.linear(x, w)
            best[name] = min(best[name], time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s and name == "bf16":
                break
    return BF16Probe(best["fp32"], best["bf16"])


def decide_fast_bf16(flags: Iterable[str], probe: Callable[[], BF16Probe | None], *, apple_arm: bool = False) -> bool:
    """Whether bfloat16 autocast pays on a CPU reporting ``flags`` (see :data:`BF16_FLAGS`).

    AMX: yes, measured (BENCHMARKS.md, section 5). No bfloat16 flag at all
    (and not Apple silicon, where ``/proc/cpuinfo`` is absent): no, bfloat16
    is emulated there. Otherwise (AVX-512 BF16, Arm BF16) ``probe()``
    decides: bfloat16 at least :data:`MIN_BF16_SPEEDUP` times faster than
    float32; None (no measurement) counts as no.
    """
    flags = set(flags)
    if "amx_bf16" in flags:
        return True
    if not flags & {"avx512_bf16", "bf16"} and not apple_arm:
        return False
    result = probe()
    return result is not None and result.speedup >= MIN_BF16_SPEEDUP


def _cache_file() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "colbert-modal" / "cpu-bf16.json"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "colbert-modal" / "cpu-bf16.json"
    return Path.home() / ".cache" / "colbert-modal" / "cpu-bf16.json"


def cached_probe(key: str, measure: Callable[[], BF16Probe] | None = None) -> BF16Probe | None:
    """``measure()`` once per ``key`` (CPU model, torch version, ...), kept in ``cpu-bf16.json`` in the
    user's cache directory (``$XDG_CACHE_HOME/colbert-modal``, else ``~/.cache/colbert-modal``)."""
    path = _cache_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        entry = known.get(key) if isinstance(known, dict) else None
        if isinstance(entry, dict):
            return BF16Probe(float(entry["fp32_s"]), float(entry["bf16_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    try:
        result = (measure or probe_bf16)()
    except RuntimeError as exc:  # bfloat16 autocast unsupported by this build
        logger.debug("bfloat16 probe failed: %s", exc)
        return None
    if not isinstance(known, dict):
        known = {}
    known[key] = {"fp32_s": result.fp32_s, "bf16_s": result.bf16_s, "speedup": round(result.speedup, 3)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("could not cache the bfloat16 probe in %s: %s", path, exc)
    logger.info("bfloat16 probe (%s): %.1f ms float32, %.1f ms bfloat16", key, 1e3 * result.fp32_s, 1e3 * result.bf16_s)
    return result


_FAST_BF16: dict[str, bool] = {}
_FAST_BF16_LOCK = threading.Lock()


def cpu_has_fast_bf16() -> bool:
    """Whether ``precision="auto"`` encodes in bfloat16 on this CPU (see :func:`decide_fast_bf16`).

    ``$COLBERT_MODAL_CPU_BF16`` (``1`` / ``0``) overrides the decision. The
    probe, where one is needed, runs once per machine (CPU model and torch
    version) and is cached on disk; the answer once per process.
    """
    forced = os.environ.get("COLBERT_MODAL_CPU_BF16", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    with _FAST_BF16_LOCK:
        if "answer" not in _FAST_BF16:
            import torch

            flags = cpu_bf16_flags()
            capability = str(torch.backends.cpu.get_cpu_capability())
            key = f"{_cpu_model()}|{platform.machine()}|torch {torch.__version__}|{capability}|{','.join(sorted(flags))}"
            apple_arm = sys.platform == "darwin" and platform.machine() == "arm64"
            _FAST_BF16["answer"] = decide_fast_bf16(flags, lambda: cached_probe(key), apple_arm=apple_arm)
        return _FAST_BF16["answer"]


def resolve_precision(precision: str | None, device: str, *, backend: str = "exact", queries: bool = False) -> str:
    """What the encoders run in on ``device`` ("cpu"/"cuda"): "fp32", "bf16", "native" or "int8".

    ``int8`` is "int8" for the lean query encoder (``queries=True``) and what
    ``auto`` gives everywhere else; on a GPU a ConfigurationError.

    "native" leaves colbert-ai's own mixed precision (float16 autocast on CUDA).
    ``auto`` builds PLAID indexes on a CPU in float32: on top of PLAID's 2-bit
    residual compression, bfloat16 encodings measurably lowered top-10
    agreement with exact MaxSim below raw ragatouille's (BENCHMARKS.md,
    section 5); exact indexes and query encoding use bfloat16 where it is fast.
    """
    value = check_precision(precision)
    if value == "int8":
        if device != "cpu":
            raise ConfigurationError(
                f"precision 'int8' (dynamic int8 query encoding) runs on a CPU only, not on {device!r}; "
                "use 'auto' there"
            )
        if queries:
            return "int8"
        value = "auto"
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
