"""Which build of the CPU kernels this process runs: vllm._C_<isa>, chosen once from the CPU.

build_ext.py builds the kernels once per instruction set of the machine's architecture;
each module registers its ops as ``torch.ops._C_<isa>.*``. The best one this CPU runs is
chosen at start-up; ``VLLM_CPU_ISA`` forces one (for tests and comparisons).
"""
import functools
import importlib
import os
import platform
from typing import Optional

import torch

from vllm.logger import init_logger

logger = init_logger(__name__)

ISA_ENV = "VLLM_CPU_ISA"
# Best first, per architecture (build_ext.ISA_FLAGS builds the same names).
ISA_PREFERENCE = {
    "x86_64": ("avx512", "avx2", "portable"),
    "aarch64": ("neon", "portable"),
}
# /proc/cpuinfo flags each build's -march needs (x86-64-v4, x86-64-v3; aarch64's asimd).
REQUIRED_CPU_FLAGS = {
    "avx512": frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
                         "avx2", "fma", "f16c", "bmi2", "movbe"}),
    "avx2": frozenset({"avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm"}),
    "neon": frozenset({"asimd"}),
    "portable": frozenset(),
}
# Features that make bfloat16 matmuls fast (AVX512-BF16 dot products, AMX tiles).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def machine() -> str:
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as /proc/cpuinfo names them (x86 "flags", arm "Features")."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return _flags_from_torch()


def _flags_from_torch() -> frozenset:
    """Without /proc/cpuinfo: what torch's own dispatch found (AVX512 / AVX2 / DEFAULT)."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    if capability.startswith("avx512"):
        return REQUIRED_CPU_FLAGS["avx512"]
    if capability == "avx2":
        return REQUIRED_CPU_FLAGS["avx2"]
    return frozenset({"asimd"}) if machine() == "aarch64" else frozenset()


def runnable_isas() -> list:
    """The kernel builds this CPU can run, best first (whether built or not)."""
    flags = cpu_flags()
    return [isa for isa in ISA_PREFERENCE.get(machine(), ("portable",))
            if REQUIRED_CPU_FLAGS[isa] <= flags]


def has_fast_bf16() -> bool:
    return bool(BF16_CPU_FLAGS & cpu_flags())


def load_ops(isa: str):
    """torch.ops._C_<isa> after importing its module, or None when that build is absent."""
    try:
        importlib.import_module(f"vllm._C_{isa}")
    except ImportError:
        return None
    return getattr(torch.ops, f"_C_{isa}")


def built_isas() -> list:
    """The runnable builds that are installed, best first."""
    return [isa for isa in runnable_isas() if load_ops(isa) is not None]


def requested_isa() -> Optional[str]:
    """VLLM_CPU_ISA, checked against what this CPU runs; None when unset."""
    requested = os.environ.get(ISA_ENV, "").strip().lower()
    if not requested:
        return None
    known = ISA_PREFERENCE.get(machine(), ("portable",))
    if requested not in known:
        raise ValueError(f"{ISA_ENV}={requested!r} is not a kernel build of this "
                         f"{machine()} machine (one of: {', '.join(known)})")
    if requested not in runnable_isas():
        raise ValueError(f"{ISA_ENV}={requested!r}: this CPU lacks "
                         f"{', '.join(sorted(REQUIRED_CPU_FLAGS[requested] - cpu_flags()))}")
    return requested


@functools.lru_cache(maxsize=1)
def selected_isa() -> Optional[str]:
    """The build this process uses: VLLM_CPU_ISA, else the best one installed; None when
    no build is installed (the PyTorch references run instead)."""
    requested = requested_isa()
    if requested is not None:
        if load_ops(requested) is None:
            raise ValueError(f"{ISA_ENV}={requested!r}: vllm._C_{requested} is not built "
                             "(pip install -e . builds every kernel set of this machine)")
        choice = requested
    else:
        built = built_isas()
        choice = built[0] if built else None
    logger.info("CPU kernels: %s (CPU runs %s%s)", choice or "none, PyTorch references",
                ", ".join(runnable_isas()), "; forced by " + ISA_ENV if requested else "")
    return choice


def kernel_ops():
    """The ops namespace of the selected build (torch.ops._C_<isa>), or None."""
    isa = selected_isa()
    return None if isa is None else load_ops(isa)
