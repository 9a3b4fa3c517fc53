"""What this device has now: memory (system and, in a container, the cgroup v2 limit), usable CPUs, load,
battery, a speed score and an optional profile name.

A probe is any callable returning a ``DeviceReport``, so tests and simulations pass their own
(``SimulatedProbe``); ``Probe`` reads the real machine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MB = 2**20
# The speed micro-benchmark's time on the reference machine (the one the server's profile tables were measured
# on, where speed_score == 1.0). A device twice as fast scores 2.0.
REFERENCE_MATMUL_S = 0.0030


@dataclass(frozen=True)
class DeviceReport:
    memory_available_mb: float  # the tighter of the system's available memory and the cgroup's room
    cpu_count: int  # CPUs this process may use (affinity, capped by the cgroup's cpu.max quota)
    load: float | None = None  # 1-minute load average per usable CPU
    on_battery: bool | None = None  # None where the platform does not say
    battery_percent: float | None = None
    speed_score: float | None = None
    profile: str | None = None
    memory_source: str = "system"  # "system" or "cgroup": which limit was tighter

    def device_info(self) -> dict[str, Any]:
        """The ``device`` object of a resolve request (the server accepts exactly these fields)."""
        info: dict[str, Any] = {"memory_available_mb": round(max(self.memory_available_mb, 0.01), 3),
                                "cpu_count": max(1, self.cpu_count)}
        if self.profile:
            info["profile"] = self.profile
        if self.speed_score:
            info["speed_score"] = round(self.speed_score, 4)
        return info


ProbeFn = Callable[[], DeviceReport]


@dataclass(frozen=True)
class CgroupLimits:
    memory_max_mb: float | None  # None: unlimited ("max") or not in a cgroup v2
    memory_current_mb: float | None
    cpu_quota: float | None  # CPUs' worth of time per period; None: unlimited

    @property
    def memory_room_mb(self) -> float | None:
        if self.memory_max_mb is None:
            return None
        return max(0.0, self.memory_max_mb - (self.memory_current_mb or 0.0))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_folder(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path | None:
    """This process's cgroup v2 folder: ``root`` + the path in /proc/self/cgroup's ``0::`` line, or ``root``
    itself (inside a container the namespace makes the container's cgroup the root)."""
    if not (root / "cgroup.controllers").exists() and not (root / "memory.max").exists():
        return None  # not cgroup v2
    line = next((ln for ln in (_read(proc_cgroup) or "").splitlines() if ln.startswith("0::")), None)
    if line:
        own = root / line[3:].lstrip("/")
        if (own / "memory.max").exists():
            return own
    return root


def read_cgroup(folder: Path | None) -> CgroupLimits:
    if folder is None:
        return CgroupLimits(None, None, None)
    mem_max = _read(folder / "memory.max")
    mem_cur = _read(folder / "memory.current")
    cpu = (_read(folder / "cpu.max") or "max").split()
    quota = None
    if cpu and cpu[0] != "max":
        period = float(cpu[1]) if len(cpu) > 1 else 100000.0
        quota = float(cpu[0]) / period
    return CgroupLimits(
        None if mem_max in (None, "max") else int(mem_max) / MB,
        None if mem_cur is None else int(mem_cur) / MB,
        quota,
    )


@functools.cache
def speed_score() -> float:
    """A fixed micro-benchmark (a 256x256 float32 matmul, best of 20) against the reference machine; measured
    once per process."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256), dtype=np.float32)
    b = rng.standard_normal((256, 256), dtype=np.float32)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, time.perf_counter() - start)
    return round(REFERENCE_MATMUL_S / best, 3)


class Probe:
    """The real device: psutil for memory, CPUs, load and battery; cgroup v2 files for container limits."""

    def __init__(self, profile: str | None = None, cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_cgroup: Path = Path("/proc/self/cgroup"), measure_speed: bool = True) -> None:
        self.profile = profile
        self.cgroup_root, self.proc_cgroup = Path(cgroup_root), Path(proc_cgroup)
        self.measure_speed = measure_speed

    def __call__(self) -> DeviceReport:
        system_mb = psutil.virtual_memory().available / MB
        limits = read_cgroup(cgroup_folder(self.cgroup_root, self.proc_cgroup))
        room = limits.memory_room_mb
        memory, source = (room, "cgroup") if room is not None and room < system_mb else (system_mb, "system")
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cpus = psutil.cpu_count() or 1
        if limits.cpu_quota is not None:
            cpus = max(1, min(cpus, int(limits.cpu_quota)))
        try:
            load = psutil.getloadavg()[0] / cpus
        except (AttributeError, OSError):
            load = None
        battery = None
        with contextlib.suppress(AttributeError, NotImplementedError, OSError):
            battery = psutil.sensors_battery()
        return DeviceReport(
            memory_available_mb=memory, cpu_count=cpus, load=load,
            on_battery=None if battery is None else not battery.power_plugged,
            battery_percent=None if battery is None else float(battery.percent),
            speed_score=speed_score() if self.measure_speed else None, profile=self.profile, memory_source=source,
        )


class SimulatedProbe:
    """A device whose resources a test (or a demo) sets: ``probe.set(memory_available_mb=300)``."""

    def __init__(self, memory_available_mb: float, cpu_count: int = 1, **fields: Any) -> None:
        self._report = DeviceReport(memory_available_mb=memory_available_mb, cpu_count=cpu_count, **fields)
        self._lock = threading.Lock()

    def set(self, **fields: Any) -> None:
        with self._lock:
            self._report = replace(self._report, **fields)

    def __call__(self) -> DeviceReport:
        with self._lock:
            return self._report
