"""The machine a measurement ran on, in one line, for benchmark tables."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import torch

BF16_UNITS = ("amx_bf16", "avx512_bf16")  # CPU flags of hardware bf16 matmuls (Intel AMX, AVX-512 BF16 on Intel and AMD Zen 4+)


def cpuinfo_field(name: str) -> str:
    """The first value of a /proc/cpuinfo field ('' where there is no such file or field, e.g. on macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), "")


def cpu_bf16_units() -> list[str]:
    """Which of BF16_UNITS this CPU has: bf16 autocast is fast with them and slow (emulated) without."""
    flags = set(cpuinfo_field("flags").split())
    return [unit for unit in BF16_UNITS if unit in flags]


def machine() -> str:
    """CPU model (with its family and model numbers, which tell apart CPUs sold under one name: two "AMD EPYC" machines
    here ran bf16 matmuls at 930 and 420 GFLOP/s), logical cores, its bf16 units, torch and python versions."""
    cpu = cpuinfo_field("model name") or platform.processor()
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    if family and model:
        cpu += f" (family {family}, model {model})"
    units = "+".join(cpu_bf16_units()) or "none"
    return (f"{cpu}, {os.cpu_count()} logical cores, bf16 units: {units}, torch {torch.__version__}, "
            f"python {platform.python_version()}")


def peak_rss_mb() -> float:
    """This process's own peak resident memory: Linux's VmHWM, the high-water mark of its address space. getrusage's
    ru_maxrss survives exec, so a worker started by a parent that had built the base model (an empty cache) reported
    the parent's peak, the same 958 MB for every implementation."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: getrusage, in KiB on Linux
