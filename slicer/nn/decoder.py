"""Decoder family: Llama layout (pre-RMSNorm, SwiGLU, RoPE, grouped-query attention, tied embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec.dims import ModelDims
from ..spec.subnet_config import SubnetConfig
from .elastic import ElasticEmbedding, ElasticLinear, ElasticRMSNorm
from .model import Attention, ModelOutput, SlicedTransformer, padding_mask


class TokenEmbeddings(nn.Module):
    def __init__(self, dims: ModelDims, hidden: int) -> None:
        super().__init__()
        self.word = ElasticEmbedding(dims.vocab_size, hidden)

    def set_active(self, hidden: int) -> None:
        self.word.set_active(hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word(ids)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate = ElasticLinear(hidden, ffn, bias=False)
        self.up = ElasticLinear(hidden, ffn, bias=False)
        self.down = ElasticLinear(ffn, hidden, bias=False)

    def set_active(self, ffn: int, hidden: int) -> None:
        self.gate.set_active(hidden, ffn)
        self.up.set_active(hidden, ffn)
        self.down.set_active(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x = x + attn(norm(x)); x = x + ffn(norm(x))."""

    def __init__(self, dims: ModelDims, heads: int, ffn: int, hidden: int) -> None:
        super().__init__()
        self.attn_norm = ElasticRMSNorm(hidden, dims.norm_eps)
        self.attn = Attention(hidden, heads, dims.head_dim, dims.group_size, bias=False)
        self.ffn_norm = ElasticRMSNorm(hidden, dims.norm_eps)
        self.ffn = SwiGLU(hidden, ffn)

    def set_active(self, heads: int, ffn: int, hidden: int) -> None:
        self.attn.set_active(heads, hidden)
        self.ffn.set_active(ffn, hidden)
        self.attn_norm.set_active(hidden)
        self.ffn_norm.set_active(hidden)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, present = self.attn(self.attn_norm(x), mask, rotary, past)
        x = x + attn
        return x + self.ffn(self.ffn_norm(x)), present


class Decoder(SlicedTransformer):
    def __init__(self, dims: ModelDims, cfg: SubnetConfig) -> None:
        super().__init__(dims, cfg)
        self.embeddings = TokenEmbeddings(dims, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(dims, h, f, cfg.hidden) for h, f in zip(cfg.heads, cfg.ffn))
        self.final_norm = ElasticRMSNorm(cfg.hidden, dims.norm_eps)
        if not dims.tie_embeddings:
            self.lm_head = ElasticLinear(cfg.hidden, dims.vocab_size, bias=False)

    def set_active(self, cfg: SubnetConfig) -> None:
        super().set_active(cfg)
        if not self.dims.tie_embeddings:
            self.lm_head.set_active(cfg.hidden, self.dims.vocab_size)

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Computed per call (hd/2 numbers), so the model holds no buffers and can be built on the meta device.
        exponents = torch.arange(0, self.dims.head_dim, 2, dtype=torch.float32, device=position_ids.device)
        inv_freq = 1.0 / self.dims.rope_theta ** (exponents / self.dims.head_dim)  # (hd/2,)
        freqs = position_ids[:, :, None].float() * inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``attention_mask`` covers past and new tokens, (B, P+T); ``past_key_values`` has one (k, v) per run layer."""
        B, T = input_ids.shape
        P = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        x = self.embeddings(input_ids)  # (B, T, hidden)
        if position_ids is None:
            position_ids = (torch.arange(T, device=input_ids.device) + P).expand(B, T)
        # Query i (absolute position P+i) may see keys 0..P+i.
        causal = torch.full((T, P + T), torch.finfo(x.dtype).min, device=x.device, dtype=x.dtype).triu(P + 1)
        pad = padding_mask(attention_mask, x.dtype)
        mask = causal[None, None] if pad is None else causal[None, None] + pad  # (B|1, 1, T, P+T)
        rotary = self.rotary(position_ids, x.dtype)
        states, presents = [x], []
        for n, i in enumerate(self.run_layers):
            x, present = self.layers[i](x, mask, rotary, None if past_key_values is None else past_key_values[n])
            states.append(x)
            presents.append(present)
        x = self.final_norm(x)
        head = self.embeddings.word if self.dims.tie_embeddings else self.lm_head
        logits = F.linear(x, head.weight[:, : x.shape[-1]])  # (B, T, vocab)
        return ModelOutput(x, tuple(states) if output_hidden_states else None, logits,
                           past_key_values=tuple(presents) if use_cache else None)
