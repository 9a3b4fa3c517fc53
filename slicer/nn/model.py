"""What both model families share: attention, the output type, and the elastic model base class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..spec.dims import ModelDims
from ..spec.shapes import parameter_shapes
from ..spec.subnet_config import SubnetConfig
from .elastic import ElasticLinear


@dataclass
class ModelOutput:
    last_hidden_state: torch.Tensor  # (B, T, hidden)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embedding output, then one per kept layer
    logits: torch.Tensor | None = None  # decoder: (B, T, vocab); encoder with a head: (B, num_labels)
    pooled: torch.Tensor | None = None  # encoder: mean of the real tokens' last hidden states, (B, hidden)
    past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # decoder, per run layer


class Attention(nn.Module):
    """Multi-head attention with optional grouped key/value heads and rotary positions.

    Slicing keeps the first ``heads`` query heads and the key/value heads they attend with (whole groups).
    """

    def __init__(self, hidden: int, heads: int, head_dim: int, group_size: int, bias: bool) -> None:
        super().__init__()
        self.head_dim, self.group_size = head_dim, group_size
        q_dim, kv_dim = heads * head_dim, heads // group_size * head_dim
        self.q = ElasticLinear(hidden, q_dim, bias)
        self.k = ElasticLinear(hidden, kv_dim, bias)
        self.v = ElasticLinear(hidden, kv_dim, bias)
        self.o = ElasticLinear(q_dim, hidden, bias)

    def set_active(self, heads: int, hidden: int) -> None:
        q_dim, kv_dim = heads * self.head_dim, heads // self.group_size * self.head_dim
        self.q.set_active(hidden, q_dim)
        self.k.set_active(hidden, kv_dim)
        self.v.set_active(hidden, kv_dim)
        self.o.set_active(q_dim, hidden)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the output and this call's key/value cache (past keys and values followed by the new ones)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, heads, T, hd)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, kv_heads, T, hd)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, kv_heads, T, hd)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, kv_heads, P+T, hd)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        if self.group_size > 1:
            k = k.repeat_interleave(self.group_size, dim=1)  # (B, heads, P+T, hd)
            v = v.repeat_interleave(self.group_size, dim=1)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim))
        return self.o(ctx.transpose(1, 2).reshape(B, T, -1)), present  # (B, T, heads*hd) -> (B, T, hidden)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the half-split layout Llama checkpoints use; cos/sin: (B, 1, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> additive (B, 1, 1, T) mask, or None when nothing is padded."""
    if attention_mask is None:
        return None
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class SlicedTransformer(nn.Module):
    """Base of both families: built at a subnet config; a model built at the maximal config is elastic.

    ``set_active(cfg)`` makes the forward compute exactly subnet ``cfg`` by slicing weights on the fly
    (no copies); ``extract`` in ``supernet.py`` turns that into a standalone model.
    """

    def __init__(self, dims: ModelDims, cfg: SubnetConfig) -> None:
        super().__init__()
        self.dims, self.cfg = dims, cfg.validate(dims)
        self.active: SubnetConfig = cfg
        self.run_layers: tuple[int, ...] = tuple(range(len(cfg.layers)))

    @property
    def is_elastic(self) -> bool:
        return self.cfg == SubnetConfig.maximal(self.dims)

    def set_active(self, cfg: SubnetConfig) -> None:
        if not self.is_elastic:
            raise ConfigError("set_active: only a model built at the maximal config is elastic; this one is a subnet")
        cfg.validate(self.dims)
        self.embeddings.set_active(cfg.hidden)
        for i, heads, ffn in zip(cfg.layers, cfg.heads, cfg.ffn):
            self.layers[i].set_active(heads, ffn, cfg.hidden)
        if hasattr(self, "final_norm"):
            self.final_norm.set_active(cfg.hidden)
        if getattr(self, "head", None) is not None:
            self.head.set_active(cfg.hidden, self.dims.num_labels)
        self.active, self.run_layers = cfg, cfg.layers

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return parameter_shapes(self.dims, self.cfg)

    def check_shapes(self) -> None:
        """Internal invariant: the modules hold exactly the tensors ``shapes.py`` describes."""
        actual = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        assert actual == self.expected_shapes(), "model tensors differ from shapes.py"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
