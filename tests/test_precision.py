"""``precision="auto"`` on a CPU: which CPUs get bfloat16 (flags, the cached probe, the override).

The decision is tested with injected CPU flags and probe results; nothing
here times anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colbert_modal.engine import precision as precision_mod
from colbert_modal.engine import resolve_precision
from colbert_modal.engine.precision import BF16Probe, cached_probe, cpu_bf16_flags, decide_fast_bf16

FAST = BF16Probe(fp32_s=0.058, bf16_s=0.024)  # AVX-512 BF16 on a 2-core EPYC: 168 vs 407 GFLOP/s
SLOW = BF16Probe(fp32_s=0.137, bf16_s=0.797)  # AVX2 only: bfloat16 emulated
EVEN = BF16Probe(fp32_s=0.050, bf16_s=0.045)  # faster, but not clearly


@pytest.mark.parametrize(
    ("flags", "probe", "apple_arm", "expected", "probed"),
    [
        ({"amx_bf16", "avx512_bf16"}, None, False, True, False),  # AMX: measured already, no probe
        ({"avx512_bf16"}, FAST, False, True, True),
        ({"avx512_bf16"}, EVEN, False, False, True),
        ({"avx512_bf16"}, SLOW, False, False, True),
        ({"avx512_bf16"}, None, False, False, True),  # the probe failed: stay float32
        ({"bf16"}, FAST, False, True, True),  # Arm BF16 (Graviton 3, Neoverse V1/V2, ...)
        (set(), FAST, False, False, False),  # no bfloat16 instructions: emulated, never probed
        (set(), FAST, True, True, True),  # Apple silicon reports no /proc/cpuinfo: the probe decides
    ],
)
def test_decide_fast_bf16(flags: set[str], probe, apple_arm: bool, expected: bool, probed: bool) -> None:
    calls: list[int] = []

    def measure():
        calls.append(1)
        return probe

    assert decide_fast_bf16(flags, measure, apple_arm=apple_arm) is expected
    assert bool(calls) is probed


def test_cpu_bf16_flags_read_from_cpuinfo() -> None:
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\nCPU part\t: 0xd40\n"
    sapphire = "flags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    assert cpu_bf16_flags(x86) == {"avx512_bf16"}
    assert cpu_bf16_flags(arm) == {"bf16"}
    assert cpu_bf16_flags(sapphire) == {"amx_bf16", "avx512_bf16"}
    assert cpu_bf16_flags("flags\t\t: fpu sse2 avx2 fma\n") == set()
    assert cpu_bf16_flags("") == set()


def test_the_probe_runs_once_per_machine_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[str] = []

    def measure(result: BF16Probe = FAST):
        calls.append("measured")
        return result

    assert cached_probe("EPYC|torch 2.13", measure) == FAST
    assert cached_probe("EPYC|torch 2.13", measure) == FAST  # read back, not measured
    assert calls == ["measured"]
    cache = tmp_path / "colbert-modal" / "cpu-bf16.json"
    assert json.loads(cache.read_text())["EPYC|torch 2.13"]["speedup"] == pytest.approx(FAST.speedup, abs=1e-3)
    assert cached_probe("EPYC|torch 2.14", lambda: measure(SLOW)) == SLOW  # a new torch measures again
    assert len(calls) == 2 and set(json.loads(cache.read_text())) == {"EPYC|torch 2.13", "EPYC|torch 2.14"}
    cache.write_text("{not json", encoding="utf-8")  # a damaged cache is measured again and rewritten
    assert cached_probe("EPYC|torch 2.13", measure) == FAST
    assert len(calls) == 3 and "EPYC|torch 2.13" in json.loads(cache.read_text())

    def unsupported():
        raise RuntimeError("bfloat16 autocast is not supported")

    assert cached_probe("other", unsupported) is None


@pytest.mark.parametrize(("probe", "expected"), [(FAST, "bf16"), (EVEN, "fp32"), (SLOW, "fp32")])
def test_auto_picks_bf16_on_a_cpu_whose_bf16_is_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: BF16Probe, expected: str
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision_mod, "_FAST_BF16", {})  # no answer from earlier in this process
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(precision_mod, "probe_bf16", lambda: probe)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", "cpu", backend="plaid") == "fp32"  # PLAID builds stay float32
    assert resolve_precision("auto", "cuda") == "native"
    assert (tmp_path / "colbert-modal" / "cpu-bf16.json").is_file()


@pytest.mark.parametrize(("value", "expected"), [("1", "bf16"), ("0", "fp32"), ("on", "bf16"), ("off", "fp32")])
def test_the_environment_overrides_the_cpu_check(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("COLBERT_MODAL_CPU_BF16", value)

    def no_probe(*a, **k):
        raise AssertionError("probed despite the override")

    monkeypatch.setattr(precision_mod, "decide_fast_bf16", no_probe)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"  # an explicit precision still wins


def test_int8_is_for_queries_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert_modal.engine.precision import check_precision
    from colbert_modal.errors import ConfigurationError

    monkeypatch.setenv("COLBERT_MODAL_CPU_BF16", "0")
    assert resolve_precision("int8", "cpu", queries=True) == "int8"
    assert resolve_precision("int8", "cpu") == "fp32"  # documents: what auto gives (float32 on this CPU)
    monkeypatch.setenv("COLBERT_MODAL_CPU_BF16", "1")
    assert resolve_precision("int8", "cpu") == "bf16"
    with pytest.raises(ConfigurationError, match="CPU only"):
        resolve_precision("int8", "cuda", queries=True)
    with pytest.raises(ConfigurationError, match="CPU only"):
        resolve_precision("int8", "cuda")
    monkeypatch.setenv("COLBERT_MODAL_PRECISION", "int8")
    assert check_precision(None) == "int8"
    assert resolve_precision(None, "cpu", queries=True) == "int8"
