"""Machine facts shared by the benchmark scripts: CPU model and whole-machine CPU time (noise).

The scripts run as ``python benchmarks/bench_x.py``, so ``benchmarks/`` is ``sys.path[0]`` and they
import this file as ``from machine import ...``. Standard library only: ``bench_train_throughput.py``
imports torch late on purpose, and this must not import it earlier.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")  # what kernels pick


def cpu_flags(wanted=SIMD_FLAGS) -> list[str]:
    """Those of ``wanted`` that /proc/cpuinfo lists (latency depends on them: VNNI for INT8, AVX-512); [] off Linux."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in wanted if f in flags]


def cpu_times(children: bool = False) -> tuple[float, float, float, float] | None:
    """(busy, steal, total, own) CPU seconds: /proc/stat's aggregate line, then this process's own
    (plus its reaped children's with ``children``, for scripts whose work runs in subprocesses); None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    v += [0] * (8 - len(v))  # user nice system idle iowait irq softirq steal
    own = sum(os.times()[:4 if children else 2])
    return (sum(v) - v[3] - v[4]) / tick, v[7] / tick, sum(v) / tick, own


def proc_stat(path: str) -> list[str] | None:
    """The fields of a /proc/PID/stat or /proc/PID/task/TID/stat file after the command name (``[0]`` is the
    state, ``[1]`` the parent pid, ``[7]`` minor faults, ``[11]``/``[12]`` user/system ticks); None if it is gone."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def noise_pct(start, end) -> tuple[float, float] | None:
    """(other processes, hypervisor steal) as % of all cores' time between two ``cpu_times()``; None if unknown."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    busy, steal, total, own = (e - s for e, s in zip(end, start))
    return 100 * max(busy - steal - own, 0.0) / total, 100 * steal / total


def emit(lines: list[str], out=None) -> str:
    """Print a benchmark's markdown report and, with ``out``, write it there too."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return text
