"""What CPU a figure was measured on: its model name and the vector-instruction flags that change speed."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "cpu_info"]

#: lscpu flags that decide which kernels run fast (fp32 FMA, AVX-512, bf16 dot products, AMX tiles).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the CPU's model name; ``flags``: which of :data:`SPEED_FLAGS` it has, in that order."""

    model: str
    flags: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.model} ({' '.join(self.flags)})" if self.flags else self.model


def cpu_info() -> CpuInfo:
    """The CPU's model and speed flags, from ``lscpu`` (``/proc/cpuinfo`` or ``platform`` where it is missing)."""
    model, flags = "", set()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        for line in lines.splitlines():
            key, _, value = line.partition(":")
            if key == "Model name":
                model = value.strip()
            elif key == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
        except OSError:
            pass
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown",
                   tuple(flag for flag in SPEED_FLAGS if flag in flags))
