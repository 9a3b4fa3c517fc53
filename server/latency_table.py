"""Measure a model's artifacts under a device profile and store the latency table that selection reads.

A profile is emulated with onnxruntime's thread count; each config's artifact comes from the cache (built
if missing), so measuring also pre-builds what the profile's devices will ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from client_sdk.latency import LatencyResult, measure_latency
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
                    seq_len: int = 128, batch_size: int = 1, precision: str = "fp32", runs: int = 20,
                    on_row: Callable[[LatencyRow], None] | None = None) -> list[LatencyRow]:
    rows = []
    for cfg in configs:
        entry = svc.build(model, cfg, precision)
        result = measure_latency(entry.file("model.onnx"), threads=profile.threads, seq_len=seq_len,
                                 batch_size=batch_size, runs=runs)
        svc.meta.put_latency(profile.name, cfg.key, precision, seq_len, batch_size, result.median_ms, "bench")
        row = LatencyRow(cfg, precision, cfg.param_count(model.dims).total, entry.key, result)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
