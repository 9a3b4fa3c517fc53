"""Budget -> subnet: the most accurate palette config whose memory and latency fit a device.

Memory = weight bytes at the chosen precision + onnxruntime's arena for the sequence length and batch.
Latency comes from the device profile's measured table when it has the config, else from a predictor fitted
on measured points: ms = a + b * GFLOPs, with b scaled by the device's speed score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slicer import BYTES_PER_PARAM, ModelDims, SubnetConfig, row_quality

from .errors import NoFit

RUNTIME_BASE_MB = 25.0  # onnxruntime session overhead, measured order of magnitude for these graphs


@dataclass(frozen=True)
class Budget:
    max_memory_mb: float | None = None
    max_latency_ms: float | None = None
    seq_len: int = 128
    batch_size: int = 1
    precision: str = "auto"  # fp32 | int8 | auto (int8 when it fits better)


@dataclass(frozen=True)
class Candidate:
    config: SubnetConfig
    quality: float | None  # palette accuracy (higher is better) or -loss; None without a palette table
    params: int


@dataclass(frozen=True)
class Choice:
    config: SubnetConfig
    precision: str
    memory_mb: float
    latency_ms: float | None
    quality: float | None


def gflops(dims: ModelDims, cfg: SubnetConfig, seq_len: int, batch: int) -> float:
    """Forward FLOPs: 2 per multiply-add of every matmul weight, plus attention scores and mixing."""
    count = cfg.param_count(dims)
    matmul = 2 * count.non_embedding * seq_len * batch
    attention = sum(4 * seq_len * seq_len * h * dims.head_dim for h in cfg.heads) * batch
    return (matmul + attention) / 1e9


def memory_mb(dims: ModelDims, cfg: SubnetConfig, precision: str, seq_len: int, batch: int) -> float:
    """Weights plus activations alive at once (hidden states, the widest FFN, attention scores), doubled for
    onnxruntime's arena, plus the session's base overhead."""
    weights = cfg.param_count(dims).total * BYTES_PER_PARAM[precision]
    activations = 4 * batch * seq_len * (4 * cfg.hidden + max(cfg.ffn) + max(cfg.heads) * seq_len)
    return (weights + 2 * activations) / 2**20 + RUNTIME_BASE_MB


class LatencyModel:
    """Least-squares fit ms = a + b * GFLOPs over measured points (one profile, or all scaled by speed)."""

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        if len(points) < 2:
            self.a, self.b = 0.0, None
            return
        n = len(points)
        mx = sum(x for x, _ in points) / n
        my = sum(y for _, y in points) / n
        var = sum((x - mx) ** 2 for x, _ in points)
        self.b = sum((x - mx) * (y - my) for x, y in points) / var if var else my / mx
        self.a = max(0.0, my - self.b * mx)

    @property
    def fitted(self) -> bool:
        return self.b is not None

    def predict(self, gf: float, speed_score: float = 1.0) -> float:
        assert self.b is not None, "predict on an unfitted model"
        return self.a + self.b * gf / speed_score


def estimate(dims: ModelDims, cfg: SubnetConfig, precision: str, budget: Budget,
             measured: dict[tuple[str, str], float] | None, predictor: LatencyModel | None,
             speed_score: float = 1.0) -> tuple[float, float | None]:
    """(memory MB, latency ms or None) of one config at the budget's shape on a device."""
    mem = memory_mb(dims, cfg, precision, budget.seq_len, budget.batch_size)
    ms = (measured or {}).get((cfg.key, precision))
    if ms is None and predictor is not None and predictor.fitted:
        ms = predictor.predict(gflops(dims, cfg, budget.seq_len, budget.batch_size), speed_score)
        if precision == "int8":
            ms *= 0.5  # dynamic int8 ran about 2x faster than fp32 on MiniLM slices (onnxruntime, 2 threads)
    return mem, ms


def choose(
    dims: ModelDims,
    candidates: Sequence[Candidate],
    budget: Budget,
    measured: dict[tuple[str, str], float] | None = None,
    predictor: LatencyModel | None = None,
    speed_score: float = 1.0,
    exclude: set[tuple[str, str]] | None = None,
) -> Choice:
    """The best fitting (config, precision). ``measured`` maps (config key, precision) -> ms on this profile;
    ``exclude`` holds (config key, precision) pairs that cannot be built (an int8 model that failed its gate)."""
    precisions = ["fp32", "int8"] if budget.precision == "auto" else [budget.precision]
    options = [Choice(cand.config, precision, *estimate(dims, cand.config, precision, budget, measured, predictor, speed_score),
                      cand.quality)
               for cand in candidates for precision in precisions
               if (cand.config.key, precision) not in (exclude or set())]
    if not options:
        raise NoFit("the model has no configs to choose from")
    if budget.max_latency_ms is not None and not any(o.latency_ms is not None for o in options):
        raise NoFit("a latency budget needs latency measurements for this device profile; none are available yet")

    def fits(o: Choice) -> bool:
        if budget.max_memory_mb is not None and o.memory_mb > budget.max_memory_mb:
            return False
        return budget.max_latency_ms is None or (o.latency_ms is not None and o.latency_ms <= budget.max_latency_ms)

    fitting = [o for o in options if fits(o)]
    if not fitting:
        smallest = min(options, key=lambda o: (o.memory_mb, o.latency_ms or 0.0))
        needs = f"{smallest.memory_mb:.0f} MB" + (f" and {smallest.latency_ms:.1f} ms" if smallest.latency_ms is not None else "")
        raise NoFit(f"no config fits max_memory_mb={budget.max_memory_mb}, max_latency_ms={budget.max_latency_ms} at "
                    f"seq_len={budget.seq_len}, batch_size={budget.batch_size}; the smallest option, "
                    f"{smallest.config.describe()} {smallest.precision}, needs {needs}")
    # Highest quality first; among equals (or without a table) the larger model, then fp32 over int8.
    size = {c.config.key: c.params for c in candidates}
    return max(fitting, key=lambda o: (o.quality if o.quality is not None else float("-inf"), size[o.config.key],
                                       o.precision == "fp32"))


def candidates_from_palette(dims: ModelDims, palette: dict[str, Any] | None, configs: Sequence[SubnetConfig]) -> list[Candidate]:
    """Palette rows give quality (accuracy, or -loss for language models); without a table, none."""
    rows = {r["key"]: r for r in (palette or {}).get("configs", [])}
    metric = (palette or {}).get("metric")
    out = []
    for cfg in configs:
        row = rows.get(cfg.key)
        out.append(Candidate(cfg, row_quality(row, metric), cfg.param_count(dims).total))
    return out
