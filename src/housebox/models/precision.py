"""Which floating-point type a model should run in on this machine."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    """The feature flags /proc/cpuinfo lists for this CPU (empty where there is no such file)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX-512 BF16). Without it, bf16 on the CPU is
    emulated and much slower than fp32 (measured on an AVX2-only EPYC: a tiny prior's training step 7x
    slower), so CPU presets and sampling choose bf16 only where this is true."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
