"""Stage-wise parts: low-rank deltas W = W_pretrain + sum_s A_s B_s, plus (optionally) stage-wise deltas of
the vectors (norm weights/biases, linear biases) and of the task head; all sliced with the subnet.

A_s is (out x r_s) and starts at zero, B_s is (r_s x in) and starts random, so a new stage changes nothing until
trained. Slicing a subnet keeps the first rows of A_s and the first columns of B_s: the product of the slices
is the slice of the product, so a subnet needs only sliced weights and sliced adapters. A vector delta is a
tensor of the base's shape (zero at first) whose leading slice is added to the slice of the base tensor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MergeError
from ..spec.shapes import PROJECTIONS
from ..spec.vocab import Family
from .elastic import ElasticLinear

NUM_STAGES = 3
DEFAULT_TARGETS = {"encoder": ("q", "k", "v", "up"), "decoder": ("q", "k", "v", "gate", "up")}
TARGET_PATHS = PROJECTIONS  # adapter targets are projections, by short name


@dataclass(frozen=True)
class AdapterSettings:
    rank: int = 8
    targets: tuple[str, ...] = field(default=())  # empty: the family's default
    stages: int = NUM_STAGES
    alpha: float | None = None  # scale = alpha / rank; None: scale 1 (the paper adds A_s B_s as is)
    stage_ranks: tuple[int, ...] = ()  # rank of each stage; empty: ``rank`` for every stage
    vectors: bool = False  # stage-wise deltas of every norm weight/bias and linear bias (BitFit / LN-tuning)
    head: bool = False  # stage-wise deltas of the task head in stages >= 1 (stage 0 trains the head itself)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank: must be a positive integer, got {self.rank!r}")
        if not 1 <= self.stages <= NUM_STAGES:
            raise ConfigError(f"stages: {self.stages} out of range; allowed 1..{NUM_STAGES}")
        bad = [t for t in self.targets if t not in TARGET_PATHS]
        if bad:
            raise ConfigError(f"targets: {bad} unknown; allowed {sorted(TARGET_PATHS)}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "stage_ranks", tuple(self.stage_ranks))
        if self.stage_ranks and (len(self.stage_ranks) != self.stages or any(
                isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.stage_ranks)):
            raise ConfigError(f"stage_ranks: {list(self.stage_ranks)} must be {self.stages} positive integers (one per stage)")

    @property
    def ranks(self) -> tuple[int, ...]:
        """The rank of each stage."""
        return self.stage_ranks or (self.rank,) * self.stages

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(1.0 if self.alpha is None else self.alpha / r for r in self.ranks)

    @property
    def scale(self) -> float:
        return self.scales[0]

    def for_family(self, family: Family) -> AdapterSettings:
        return self if self.targets else dataclasses.replace(self, targets=DEFAULT_TARGETS[family])


def recommended(rank: int = 8) -> AdapterSettings:
    """The default method (issue 17's ablation, benchmarks/README.md): rank r for stages 0-1 and 4r for stage 2,
    vector and head deltas. ``AdapterSettings()`` itself stays the paper's low-rank-only method."""
    return AdapterSettings(rank=rank, stage_ranks=(rank, rank, 4 * rank), vectors=True, head=True)


class LowRankStack(nn.Module):
    """Pairs (A_s, B_s) for each stage; only the current stage is trainable."""

    def __init__(self, in_features: int, out_features: int, ranks: tuple[int, ...], scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.scale = self.scales[0]
        self.upto = len(ranks)  # stages counted in the delta (``Supernet.only_stages`` lowers it)
        self.A = nn.ParameterList(nn.Parameter(torch.zeros(out_features, r)) for r in ranks)
        self.B = nn.ParameterList(nn.Parameter(torch.empty(r, in_features)) for r in ranks)
        for b in self.B:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        self.set_stage(0)

    def set_stage(self, stage: int) -> None:
        for s, (a, b) in enumerate(zip(self.A, self.B)):
            a.requires_grad_(s == stage)
            b.requires_grad_(s == stage)

    def _pairs(self):
        return list(zip(self.A, self.B, self.scales))[: self.upto]

    def delta(self, out_features: int, in_features: int) -> torch.Tensor:
        """sum_s A_s[:out] @ B_s[:, :in] * scale_s: the one place the weight update is defined."""
        return sum(a[:out_features] @ b[:, :in_features] * c for a, b, c in self._pairs())

    def forward(self, x: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
        # Same as x @ delta.T, but through rank r: cheaper than forming the delta during training.
        return sum(F.linear(F.linear(x, b[:, :in_features]), a[:out_features]) * c for a, b, c in self._pairs())


class StageDeltas(nn.Module):
    """A parametrization (torch.nn.utils.parametrize): tensor = base + sum_s delta_s, one zero-initialised delta
    per stage in ``stages``; only the current stage's is trainable. Slicing the result slices base and deltas
    alike, so a subnet's tensor is the slice of the merged tensor."""

    def __init__(self, shape: torch.Size, stages: tuple[int, ...]) -> None:
        super().__init__()
        self.deltas = nn.ParameterDict({str(s): nn.Parameter(torch.zeros(shape)) for s in stages})
        self.upto = max(stages) + 1 if stages else 0
        self.merged = False
        self.set_stage(0)

    def set_stage(self, stage: int) -> None:
        for s, d in self.deltas.items():
            d.requires_grad_(int(s) == stage)

    def delta(self) -> torch.Tensor | None:
        parts = [d for s, d in self.deltas.items() if int(s) < self.upto]
        return sum(parts) if parts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = None if self.merged else self.delta()
        return x if delta is None else x + delta


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. Its sum is non-finite whenever a value is (NaN and infinities
    propagate), and summing is one read, where ``isfinite(t).all()`` took 0.18 s for SmolLM2's 28M-value
    embedding on one thread (issue 11): only a non-finite sum, or an overflowing one, needs the exact check."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


class AdaptedLinear(nn.Module):
    """Wraps an elastic base layer (never replaces it) with a low-rank stack; merge is tracked."""

    def __init__(self, base: ElasticLinear, adapter: LowRankStack) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter
        self.merged = False

    def set_active(self, in_features: int, out_features: int) -> None:
        self.base.set_active(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.adapter(x, self.base.active_out, self.base.active_in)

    def effective_weight(self, out_features: int, in_features: int) -> torch.Tensor:
        """The slice of W_pretrain + delta, checked finite (slice first, then merge: cheaper, same result)."""
        w = self.base.weight[:out_features, :in_features]
        if not self.merged:
            w = w + self.adapter.delta(out_features, in_features)
        if not all_finite(w):
            raise MergeError("merging adapters produced non-finite weights; the adapter stack is corrupt or diverged")
        return w

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapters into the base weight in place. Idempotent; refuses non-finite results."""
        if self.merged:
            return
        self.base.weight.copy_(self.effective_weight(self.base.out_features, self.base.in_features))
        self.merged = True
