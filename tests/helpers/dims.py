"""Model dims for tests (torch-free): the tiny families unit tests build models from, and MiniLM's shape."""

from __future__ import annotations

from slicer.spec.dims import ModelDims


def tiny_encoder_dims() -> ModelDims:
    """BERT layout; hidden == heads * head_dim, so attention projections are square."""
    return ModelDims(family="encoder", vocab_size=97, hidden=32, num_layers=4, num_heads=4, head_dim=8, ffn=64,
                     max_positions=64, norm_eps=1e-12, type_vocab_size=2)


def tiny_decoder_dims() -> ModelDims:
    """Llama layout with grouped-query attention (6 query heads, 2 key/value heads) and tied embeddings."""
    return ModelDims(family="decoder", vocab_size=97, hidden=48, num_layers=4, num_heads=6, head_dim=8, ffn=64,
                     max_positions=64, norm_eps=1e-6, num_kv_heads=2, tie_embeddings=True)


def minilm_dims() -> ModelDims:
    """all-MiniLM-L6-v2's architecture (no weights needed for counting)."""
    return ModelDims(family="encoder", vocab_size=30522, hidden=384, num_layers=6, num_heads=12, head_dim=32,
                     ffn=1536, max_positions=512, norm_eps=1e-12, type_vocab_size=2)
