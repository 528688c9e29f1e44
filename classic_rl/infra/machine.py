"""The machine a measurement ran on, in one line, for benchmark tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU model, logical cores, torch and python versions."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, python {platform.python_version()}"
