"""ModelDims: the teacher's architecture, i.e. the largest shape every subnet is sliced from. Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .vocab import ENCODER, FAMILIES, Family


@dataclass(frozen=True)
class ModelDims:
    """Architecture constants of one base model.

    encoder: BERT layout (post-LayerNorm, GELU FFN, learned absolute positions, token types).
    decoder: Llama layout (pre-RMSNorm, SwiGLU FFN, RoPE, grouped-query attention).
    """

    family: Family
    vocab_size: int
    hidden: int
    num_layers: int
    num_heads: int
    head_dim: int
    ffn: int
    max_positions: int
    norm_eps: float
    num_kv_heads: int = 0  # decoder only; 0 means "same as num_heads"
    type_vocab_size: int = 0  # encoder only
    position_offset: int = 0  # encoder: RoBERTa-style checkpoints start positions at padding_idx + 1
    rope_theta: float = 10000.0  # decoder only
    tie_embeddings: bool = False
    pad_token_id: int | None = None
    num_labels: int = 0  # encoder: a classification head on the mean-pooled output when > 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family: {self.family!r} is not one of {list(FAMILIES)}")
        for name in ("vocab_size", "hidden", "num_layers", "num_heads", "head_dim", "ffn", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if self.num_labels and self.family != ENCODER:
            raise ConfigError("num_labels: classification heads are for encoders; decoders predict tokens")
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads: {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def base(self) -> ModelDims:
        """The same architecture without a task head (what base checkpoints and fingerprints describe)."""
        return dataclasses.replace(self, num_labels=0)

    def with_labels(self, num_labels: int) -> ModelDims:
        return dataclasses.replace(self, num_labels=num_labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDims:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model dims: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)
