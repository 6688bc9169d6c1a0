"""What this host lacks compared with a profile's target (CPU, instruction set, providers)."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

from edge_agent.profiles import HardwareProfile

__all__ = ["describe_host", "host_gaps"]

# profile ISA names -> /proc/cpuinfo flag names (x86 "flags", Arm "Features")
_CPUINFO_NAMES = {
    "avx512vnni": "avx512_vnni",
    "neon": "asimd",
    "dotprod": "asimddp",
    "fp16": "asimdhp",
}


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def host_gaps(profile: HardwareProfile) -> list[str]:
    """Why timings on this host do not stand for the target; empty when they do."""
    import onnxruntime as ort

    gaps = []
    machine = platform.machine()
    if machine != profile.hardware.arch:
        gaps.append(f"this host is {machine}, the target {profile.hardware.arch}")
    else:
        flags = _cpu_flags()
        missing = [
            f for f in profile.hardware.isa_features if _CPUINFO_NAMES.get(f, f) not in flags
        ]
        if missing:
            gaps.append(f"this CPU lacks {', '.join(missing)}")
        wanted = {_CPUINFO_NAMES.get(f, f) for f in profile.hardware.isa_features}
        extra_vnni = sorted(({"avx512_vnni", "avx_vnni"} & flags) - wanted)
        if extra_vnni and machine == "x86_64":
            gaps.append(
                f"this CPU has {', '.join(extra_vnni)}, the target does not: "
                "int8 timings here overstate the target's"
            )
    available = set(ort.get_available_providers())
    absent = [p for p in profile.runtime.execution_providers if p not in available]
    if absent:
        gaps.append(f"{', '.join(absent)} not available here (validated on the CPU provider)")
    if profile.hardware.accelerator.kind != "none":
        gaps.append(f"the target's {profile.hardware.accelerator.kind} is not on this host")
    return gaps


def describe_host() -> str:
    """A short description of this machine, for benchmark figures: arch, CPU, cores."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return f"{platform.machine()} {model or platform.processor() or 'CPU'}, {cores} cores"
