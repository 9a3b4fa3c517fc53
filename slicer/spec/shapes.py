"""Parameter names and shapes of a model of a given family and subnet config. Torch-free.

This is the single source of truth for a model's tensors: counting parameters without building the model,
building it (the modules are checked against it), slicing a supernet's weights into a subnet (every tensor of
a subnet is the leading block of the matching supernet tensor) and checking loaded checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .dims import ModelDims
from .vocab import ENCODER


class SubnetConfig(Protocol):
    """What shapes need of a ``subnet_config.SubnetConfig`` (a protocol, so that module can count with this
    one without an import cycle)."""

    layers: Sequence[int]
    heads: Sequence[int]
    ffn: Sequence[int]
    hidden: int

Shape = tuple[int, ...]

# The linear projections of a layer by short name (adapter targets use these names), and their module paths.
PROJECTIONS: dict[str, str] = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
                               "gate": "ffn.gate", "up": "ffn.up", "down": "ffn.down"}

# How a layer's tensors follow its units when heads or neurons are reordered or sliced (names inside a layer):
QUERY_ROWS = ("attn.q.weight", "attn.q.bias")  # group_size * head_dim rows per attention unit
KV_ROWS = ("attn.k.weight", "attn.k.bias", "attn.v.weight", "attn.v.bias")  # head_dim rows per unit
UNIT_COLS = ("attn.o.weight",)  # group_size * head_dim columns per unit
NEURON_ROWS = ("ffn.up.weight", "ffn.up.bias", "ffn.gate.weight")  # one row per FFN neuron
NEURON_COLS = ("ffn.down.weight",)  # one column per FFN neuron

# The hidden axis, by name suffix: tensors whose columns are hidden channels, and those whose rows are.
HIDDEN_COLS = (".word.weight", ".position.weight", ".token_type.weight", "attn.q.weight", "attn.k.weight",
               "attn.v.weight", "ffn.up.weight", "ffn.gate.weight", "lm_head.weight", "head.weight")
HIDDEN_ROWS = ("attn.o.weight", "attn.o.bias", "ffn.down.weight", "ffn.down.bias", "norm.weight", "norm.bias")


def encoder_shapes(dims: ModelDims, cfg: SubnetConfig) -> dict[str, Shape]:
    h = cfg.hidden
    shapes: dict[str, Shape] = {
        "embeddings.word.weight": (dims.vocab_size, h),
        "embeddings.position.weight": (dims.max_positions, h),
        "embeddings.token_type.weight": (dims.type_vocab_size, h),
        "embeddings.norm.weight": (h,),
        "embeddings.norm.bias": (h,),
    }
    for j, (heads, ffn) in enumerate(zip(cfg.heads, cfg.ffn)):
        attn = heads * dims.head_dim
        p = f"layers.{j}."
        for proj in ("q", "k", "v"):
            shapes[p + f"attn.{proj}.weight"] = (attn, h)
            shapes[p + f"attn.{proj}.bias"] = (attn,)
        shapes[p + "attn.o.weight"] = (h, attn)
        shapes[p + "attn.o.bias"] = (h,)
        shapes[p + "attn_norm.weight"] = (h,)
        shapes[p + "attn_norm.bias"] = (h,)
        shapes[p + "ffn.up.weight"] = (ffn, h)
        shapes[p + "ffn.up.bias"] = (ffn,)
        shapes[p + "ffn.down.weight"] = (h, ffn)
        shapes[p + "ffn.down.bias"] = (h,)
        shapes[p + "ffn_norm.weight"] = (h,)
        shapes[p + "ffn_norm.bias"] = (h,)
    if dims.num_labels:
        shapes["head.weight"] = (dims.num_labels, h)
        shapes["head.bias"] = (dims.num_labels,)
    return shapes


def decoder_shapes(dims: ModelDims, cfg: SubnetConfig) -> dict[str, Shape]:
    h = cfg.hidden
    shapes: dict[str, Shape] = {"embeddings.word.weight": (dims.vocab_size, h)}
    for j, (heads, ffn) in enumerate(zip(cfg.heads, cfg.ffn)):
        q_dim = heads * dims.head_dim
        kv_dim = heads // dims.group_size * dims.head_dim
        p = f"layers.{j}."
        shapes[p + "attn_norm.weight"] = (h,)
        shapes[p + "attn.q.weight"] = (q_dim, h)
        shapes[p + "attn.k.weight"] = (kv_dim, h)
        shapes[p + "attn.v.weight"] = (kv_dim, h)
        shapes[p + "attn.o.weight"] = (h, q_dim)
        shapes[p + "ffn_norm.weight"] = (h,)
        shapes[p + "ffn.gate.weight"] = (ffn, h)
        shapes[p + "ffn.up.weight"] = (ffn, h)
        shapes[p + "ffn.down.weight"] = (h, ffn)
    shapes["final_norm.weight"] = (h,)
    if not dims.tie_embeddings:
        shapes["lm_head.weight"] = (dims.vocab_size, h)
    return shapes


def parameter_shapes(dims: ModelDims, cfg: SubnetConfig) -> dict[str, Shape]:
    """Every parameter of the model ``(dims, cfg)``, by state-dict name, in module order."""
    return encoder_shapes(dims, cfg) if dims.family == ENCODER else decoder_shapes(dims, cfg)


def is_embedding(name: str) -> bool:
    """Embedding tables (and the encoder's embedding LayerNorm) are not transformer-layer parameters."""
    return name.startswith("embeddings.") or name == "lm_head.weight"
