"""Budget -> subnet: the most accurate palette config whose memory and latency fit a device.

Memory = weight bytes at the chosen precision + onnxruntime's arena for the sequence length and batch.
Latency estimates come from ``latency_model`` (per profile, with an uncertainty); a latency budget is checked
against the conservative estimate (its upper quantile), so a choice near the limit is not a coin toss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slicer import BYTES_PER_PARAM, ModelDims, PaletteTable, SubnetConfig, row_quality

from .errors import NoFit
from .latency_model import Estimates, LatencyEstimate, gflops

__all__ = ["Budget", "Candidate", "Choice", "NoFit", "candidates_from_palette", "choose", "gflops", "memory_mb", "menu",
           "pick", "precisions"]

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
    latency: LatencyEstimate | None
    quality: float | None

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else self.latency.ms


def memory_mb(dims: ModelDims, cfg: SubnetConfig, precision: str, seq_len: int, batch: int) -> float:
    """Weights plus activations alive at once (hidden states, the widest FFN, attention scores), doubled for
    onnxruntime's arena, plus the session's base overhead."""
    weights = cfg.param_count(dims).total * BYTES_PER_PARAM[precision]
    activations = 4 * batch * seq_len * (4 * cfg.hidden + max(cfg.ffn) + max(cfg.heads) * seq_len)
    return (weights + 2 * activations) / 2**20 + RUNTIME_BASE_MB


def menu(dims: ModelDims, candidates: Sequence[Candidate], precisions: Sequence[str], seq_len: int, batch: int,
         latency: Estimates | None = None) -> tuple[Choice, ...]:
    """Every (config, precision) at a shape with its memory and latency estimates, best first: highest quality,
    among equals (or without a table) the larger model, then fp32 over int8. What ``pick`` chooses from; it
    depends only on its arguments, so a caller may keep it while they are the same."""
    latency = latency or {}
    ranked = sorted(((cand, precision) for cand in candidates for precision in precisions),
                    key=lambda c: (c[0].quality if c[0].quality is not None else float("-inf"), c[0].params,
                                   c[1] == "fp32"), reverse=True)  # stable: ties keep the candidates' order
    return tuple(Choice(cand.config, precision, memory_mb(dims, cand.config, precision, seq_len, batch),
                        latency.get((cand.config.key, precision)), cand.quality) for cand, precision in ranked)


def precisions(budget: Budget) -> tuple[str, ...]:
    return ("fp32", "int8") if budget.precision == "auto" else (budget.precision,)


def pick(options: Sequence[Choice], budget: Budget, exclude: set[tuple[str, str]] | None = None) -> Choice:
    """The best option of a ``menu`` that fits the budget. ``exclude`` holds (config key, precision) pairs that
    cannot be built (an int8 model that failed its gate). A latency budget is met when the conservative estimate
    (``upper_ms``) is within it."""
    exclude = exclude or set()

    def fits(o: Choice) -> bool:
        if budget.max_memory_mb is not None and o.memory_mb > budget.max_memory_mb:
            return False
        return budget.max_latency_ms is None or (o.latency is not None and o.latency.upper_ms <= budget.max_latency_ms)

    for o in options:  # best first
        if fits(o) and (o.config.key, o.precision) not in exclude:
            return o
    options = [o for o in options if (o.config.key, o.precision) not in exclude]
    if not options:
        raise NoFit("the model has no configs to choose from")
    if budget.max_latency_ms is not None and not any(o.latency is not None for o in options):
        raise NoFit("a latency budget needs latency estimates for this device profile; none are available "
                    "(no calibration and no measurements)")
    smallest = min(options, key=lambda o: (o.memory_mb, o.latency.upper_ms if o.latency else 0.0))
    needs = f"{smallest.memory_mb:.0f} MB" + (
        f" and {smallest.latency.upper_ms:.1f} ms (90 % upper estimate; {smallest.latency.ms:.1f} ms median, "
        f"{smallest.latency.source})" if smallest.latency is not None else "")
    raise NoFit(f"no config fits max_memory_mb={budget.max_memory_mb}, max_latency_ms={budget.max_latency_ms} at "
                f"seq_len={budget.seq_len}, batch_size={budget.batch_size}; the smallest option, "
                f"{smallest.config.describe()} {smallest.precision}, needs {needs}")


def choose(
    dims: ModelDims,
    candidates: Sequence[Candidate],
    budget: Budget,
    latency: Estimates | None = None,
    exclude: set[tuple[str, str]] | None = None,
) -> Choice:
    """The best fitting (config, precision). ``latency`` maps (config key, precision) -> the estimate on the
    device; see ``pick`` for ``exclude`` and how a latency budget is met."""
    return pick(menu(dims, candidates, precisions(budget), budget.seq_len, budget.batch_size, latency), budget, exclude)


def candidates_from_palette(dims: ModelDims, palette: PaletteTable | None, configs: Sequence[SubnetConfig]) -> list[Candidate]:
    """Palette rows give quality (accuracy, or -loss for language models); without a table, none."""
    rows = {r["key"]: r for r in palette.rows} if palette else {}
    metric = palette.metric if palette else None
    return [Candidate(cfg, row_quality(rows.get(cfg.key), metric), cfg.param_count(dims).total) for cfg in configs]
