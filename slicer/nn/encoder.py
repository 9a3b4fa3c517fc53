"""Encoder family: BERT layout (MiniLM; RoBERTa/ELECTRA-style checkpoints are a key map away)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec.dims import ModelDims
from ..spec.subnet_config import SubnetConfig
from .elastic import ElasticEmbedding, ElasticLayerNorm, ElasticLinear
from .model import Attention, ModelOutput, SlicedTransformer, padding_mask


class Embeddings(nn.Module):
    def __init__(self, dims: ModelDims, hidden: int) -> None:
        super().__init__()
        self.word = ElasticEmbedding(dims.vocab_size, hidden)
        self.position = ElasticEmbedding(dims.max_positions, hidden)
        self.token_type = ElasticEmbedding(dims.type_vocab_size, hidden)
        self.norm = ElasticLayerNorm(hidden, dims.norm_eps)
        self.position_offset = dims.position_offset

    def set_active(self, hidden: int) -> None:
        for m in (self.word, self.position, self.token_type, self.norm):
            m.set_active(hidden)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device) + self.position_offset  # (T,)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        return self.norm(self.word(ids) + self.position(positions)[None] + self.token_type(token_type_ids))


class GeluFFN(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.up = ElasticLinear(hidden, ffn)
        self.down = ElasticLinear(ffn, hidden)

    def set_active(self, ffn: int, hidden: int) -> None:
        self.up.set_active(hidden, ffn)
        self.down.set_active(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class EncoderLayer(nn.Module):
    """Post-LayerNorm block: x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, dims: ModelDims, heads: int, ffn: int, hidden: int) -> None:
        super().__init__()
        self.attn = Attention(hidden, heads, dims.head_dim, group_size=1, bias=True)
        self.attn_norm = ElasticLayerNorm(hidden, dims.norm_eps)
        self.ffn = GeluFFN(hidden, ffn)
        self.ffn_norm = ElasticLayerNorm(hidden, dims.norm_eps)

    def set_active(self, heads: int, ffn: int, hidden: int) -> None:
        self.attn.set_active(heads, hidden)
        self.ffn.set_active(ffn, hidden)
        self.attn_norm.set_active(hidden)
        self.ffn_norm.set_active(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask)[0])
        return self.ffn_norm(x + self.ffn(x))


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens: (B, T, H) -> (B, H). How MiniLM's sentence embeddings are pooled."""
    if attention_mask is None:
        return x.mean(dim=1)
    m = attention_mask[..., None].to(x.dtype)  # (B, T, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class Encoder(SlicedTransformer):
    def __init__(self, dims: ModelDims, cfg: SubnetConfig) -> None:
        super().__init__(dims, cfg)
        self.embeddings = Embeddings(dims, cfg.hidden)
        self.layers = nn.ModuleList(EncoderLayer(dims, h, f, cfg.hidden) for h, f in zip(cfg.heads, cfg.ffn))
        self.head = ElasticLinear(cfg.hidden, dims.num_labels) if dims.num_labels else None

    def add_classification_head(self, num_labels: int) -> None:
        """Give a base model a fresh head (small random weights) for ``num_labels`` classes."""
        self.dims = self.dims.with_labels(num_labels)
        device = self.embeddings.word.weight.device
        self.head = ElasticLinear(self.cfg.hidden, num_labels).to(device)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.head.set_active(self.active.hidden, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, hidden)
        mask = padding_mask(attention_mask, x.dtype)
        states = [x]
        for i in self.run_layers:
            x = self.layers[i](x, mask)
            states.append(x)
        pooled = mean_pool(x, attention_mask)
        logits = self.head(pooled) if self.head is not None else None
        return ModelOutput(x, tuple(states) if output_hidden_states else None, logits, pooled)
