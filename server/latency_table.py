"""Measure a model's artifacts under a device profile and store the latency table that selection reads.

A profile is emulated with onnxruntime's thread count; each config's artifact comes from the cache (built
if missing), so measuring also pre-builds what the profile's devices will ask for. All artifacts are timed
together, interleaved over rounds (``client_sdk.latency.measure_interleaved``), so a busy spell on a shared
machine slows every config a little rather than one config a lot; warm-up passes are discarded and each row is
the median of its timed passes without their run-queue waits (``LatencyResult.table_ms``: the server's
neighbours are not the device's), stored with the machine's load and the spinning setting it ran with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from client_sdk.latency import ALLOW_SPINNING, LatencyResult, measure_interleaved
from slicer import SubnetConfig

from .profiles import DeviceProfile
from .service import DeliveryService, LoadedModel


@dataclass(frozen=True)
class LatencyRow:
    config: SubnetConfig
    precision: str
    params: int
    artifact_id: str
    result: LatencyResult


def spread_by_size(model: LoadedModel, n: int) -> list[SubnetConfig]:
    """``n`` configs evenly spaced by parameter count, smallest and largest included (a predictor needs range)."""
    configs = sorted(model.configs(), key=lambda c: c.param_count(model.dims).total)
    if n <= 0 or n >= len(configs):
        return configs
    if n == 1:
        return [configs[-1]]
    picks = sorted({round(i * (len(configs) - 1) / (n - 1)) for i in range(n)})
    return [configs[i] for i in picks]


def measure_profile(svc: DeliveryService, model: LoadedModel, profile: DeviceProfile, configs: list[SubnetConfig],
                    seq_len: int = 128, batch_size: int = 1, precision: str = "fp32", runs: int = 20, rounds: int = 3,
                    allow_spinning: bool = ALLOW_SPINNING, on_build: Callable[[SubnetConfig], None] | None = None
                    ) -> list[LatencyRow]:
    """Build (or find) every artifact first, then time them all interleaved; ``runs`` timed passes per config."""
    entries = []
    for cfg in configs:
        if on_build is not None:
            on_build(cfg)
        entries.append(svc.build(model, cfg, precision))
    results = measure_interleaved([e.file("model.onnx") for e in entries], profile.threads, seq_len, batch_size,
                                  rounds=rounds, runs=runs, allow_spinning=allow_spinning)
    rows = []
    for cfg, entry, result in zip(configs, entries, results):
        svc.meta.put_latency(profile.name, cfg.key, precision, seq_len, batch_size, result.table_ms, "bench",
                             threads=profile.threads, load=result.load, spinning=result.allow_spinning)
        rows.append(LatencyRow(cfg, precision, cfg.param_count(model.dims).total, entry.key, result))
    return rows
