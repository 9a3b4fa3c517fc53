"""Stage-wise low-rank adapters: W = W_pretrain + sum_s A_s B_s, sliced with the subnet.

A_s is (out x r) and starts at zero, B_s is (r x in) and starts random, so a new stage changes nothing until
trained. Slicing a subnet keeps the first rows of A_s and the first columns of B_s: the product of the slices
is the slice of the product, so a subnet needs only sliced weights and sliced adapters.
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank: must be a positive integer, got {self.rank!r}")
        if not 1 <= self.stages <= NUM_STAGES:
            raise ConfigError(f"stages: {self.stages} out of range; allowed 1..{NUM_STAGES}")
        bad = [t for t in self.targets if t not in TARGET_PATHS]
        if bad:
            raise ConfigError(f"targets: {bad} unknown; allowed {sorted(TARGET_PATHS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def for_family(self, family: Family) -> AdapterSettings:
        return self if self.targets else AdapterSettings(self.rank, DEFAULT_TARGETS[family], self.stages, self.alpha)


class LowRankStack(nn.Module):
    """Pairs (A_s, B_s) for each stage; only the current stage is trainable."""

    def __init__(self, in_features: int, out_features: int, rank: int, stages: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.A = nn.ParameterList(nn.Parameter(torch.zeros(out_features, rank)) for _ in range(stages))
        self.B = nn.ParameterList(nn.Parameter(torch.empty(rank, in_features)) for _ in range(stages))
        for b in self.B:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        self.set_stage(0)

    def set_stage(self, stage: int) -> None:
        for s, (a, b) in enumerate(zip(self.A, self.B)):
            a.requires_grad_(s == stage)
            b.requires_grad_(s == stage)

    def delta(self, out_features: int, in_features: int) -> torch.Tensor:
        """sum_s A_s[:out] @ B_s[:, :in] * scale: the one place the weight update is defined."""
        return sum(a[:out_features] @ b[:, :in_features] for a, b in zip(self.A, self.B)) * self.scale

    def forward(self, x: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
        # Same as x @ delta.T, but through rank r: cheaper than forming the delta during training.
        return sum(F.linear(F.linear(x, b[:, :in_features]), a[:out_features]) for a, b in zip(self.A, self.B)) * self.scale


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
        if not torch.isfinite(w).all():
            raise MergeError("merging adapters produced non-finite weights; the adapter stack is corrupt or diverged")
        return w

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapters into the base weight in place. Idempotent; refuses non-finite results."""
        if self.merged:
            return
        self.base.weight.copy_(self.effective_weight(self.base.out_features, self.base.in_features))
        self.merged = True
