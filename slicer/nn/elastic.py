"""Elastic building blocks: layers that can run as their leading slice and report it as a plain tensor.

Every slice is a prefix (the first ``n`` rows/columns/channels); importance reordering (``importance.py``) puts
the most useful units first so that prefixes keep them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ElasticLinear(nn.Linear):
    """``nn.Linear`` that can compute with its top-left ``active_out x active_in`` block."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.active_in, self.active_out = in_features, out_features

    def set_active(self, in_features: int, out_features: int) -> None:
        assert in_features <= self.in_features and out_features <= self.out_features, "slice exceeds layer"
        self.active_in, self.active_out = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.linear(x, self.weight[: self.active_out, : self.active_in], bias)


class ElasticEmbedding(nn.Embedding):
    """Embedding table whose vectors can be cut to the first ``active_dim`` channels."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.active_dim = embedding_dim

    def set_active(self, dim: int) -> None:
        assert dim <= self.embedding_dim
        self.active_dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight[:, : self.active_dim])


class ElasticLayerNorm(nn.LayerNorm):
    """LayerNorm over the first ``active_dim`` channels (statistics over the active channels only)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(dim, eps=eps)
        self.active_dim = dim

    def set_active(self, dim: int) -> None:
        assert dim <= self.normalized_shape[0]
        self.active_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.active_dim
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


class ElasticRMSNorm(nn.Module):
    """Llama's RMSNorm (computed in at least float32) over the first ``active_dim`` channels."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.active_dim = dim

    def set_active(self, dim: int) -> None:
        assert dim <= self.weight.shape[0]
        self.active_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight[: self.active_dim] * x.to(dtype)
