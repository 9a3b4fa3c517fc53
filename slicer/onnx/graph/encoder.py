"""The encoder graph (BERT layout, slicer/encoder.py): post-LayerNorm blocks, GELU FFN, mean pooling, optional head.

Per kept layer the heads and FFN width come from the config, so heterogeneous layers and a sliced hidden size
need nothing special: every tensor is already the sliced one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...spec.dims import ModelDims
from ...spec.subnet_config import SubnetConfig
from .ops import FLOAT, INT64, MASK_VALUE, MS, GraphWriter

Weights = dict[str, np.ndarray]
ATTENTIONS = ("contrib", "mha", "plain")


@dataclass(frozen=True)
class EncoderFusion:
    """Which parts of an encoder block are onnxruntime contrib operators (``com.microsoft``).

    ``attention``: ``contrib`` (one ``Attention`` node: QKV projection, mask, softmax, context), ``mha`` (QKV MatMul,
    then ``MultiHeadAttention``), ``plain`` (MatMul, Softmax, Transpose). ``skip_norm``: residual + bias + LayerNorm
    as ``SkipLayerNormalization``. ``bias_gelu``: the FFN's bias + GELU as ``BiasGelu``. The graph modes are presets
    (``ENCODER_FUSION``); the other combinations exist so benchmarks/ort_latency.py can time them side by side.

    The fused preset leaves ``SkipLayerNormalization`` out: onnxruntime's CPU kernel of it took 320 us for one
    (1, 128, 384) block where ``LayerNormalization`` took 47 us and each ``Add`` ~25 us (onnxruntime 1.32, this
    Xeon, one thread; with two, 326 us against 173 us for the unfused three), so it cost the minnet ~0.8 ms a pass
    (benchmarks/results/ort-latency.json has the per-operator profiles).
    """

    attention: str = "contrib"
    skip_norm: bool = False
    bias_gelu: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention: {self.attention!r} is not one of {list(ATTENTIONS)}")


ENCODER_FUSION = {"fused": EncoderFusion("contrib", skip_norm=False, bias_gelu=True),
                  "plain": EncoderFusion("plain", skip_norm=False, bias_gelu=False)}


def build_encoder(g: GraphWriter, dims: ModelDims, cfg: SubnetConfig, w: Weights, fusion: EncoderFusion) -> None:
    ids = g.input("input_ids", INT64, ["batch", "seq"])
    mask = g.input("attention_mask", INT64, ["batch", "seq"])
    types = g.input("token_type_ids", INT64, ["batch", "seq"])

    # embeddings: word + position + token type, then LayerNorm
    word = g.op("Gather", [g.weight("embeddings.word.weight", w["embeddings.word.weight"]), ids])  # (B, T, h)
    seq = g.scalar(g.dim(ids, 1))
    start = g.const(dims.position_offset, shape=())
    positions = g.op("Range", [start, g.op("Add", [seq, start]), g.const(1, shape=())])  # (T,)
    pos = g.op("Gather", [g.weight("embeddings.position.weight", w["embeddings.position.weight"]), positions])  # (T, h)
    tok = g.op("Gather", [g.weight("embeddings.token_type.weight", w["embeddings.token_type.weight"]), types])
    x = g.layer_norm(g.op("Add", [g.op("Add", [word, pos]), tok]), w["embeddings.norm.weight"],
                     w["embeddings.norm.bias"], dims.norm_eps, "embeddings.norm")

    mask_f = g.op("Cast", [mask], to=FLOAT)  # (B, T)
    if fusion.attention != "plain":
        mask_index = g.op("Cast", [mask], to=6)  # int32 (B, T): the contrib operators' raw key mask
    else:
        # (B, T) 1/0 -> additive (B, 1, 1, T), as slicer/model.py padding_mask
        pad = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), mask_f]), g.const(MASK_VALUE, np.float32)])
        additive = g.op("Unsqueeze", [pad, g.const([1, 2])])

    for j, heads in enumerate(cfg.heads):
        p = f"layers.{j}."
        a = heads * dims.head_dim
        # q, k, v in one MatMul: (h, 3a). Plain and MultiHeadAttention graphs fold 1/sqrt(hd) into the query weights;
        # the contrib Attention applies it itself and carries neither ``scale`` nor ``qkv_hidden_sizes``: onnxruntime's
        # quantiser turns only such an Attention into QAttention (int8 weights; otherwise they stay float32, 0.46x fp32
        # size for the maxnet)
        scale = 1.0 if fusion.attention == "contrib" else 1.0 / math.sqrt(dims.head_dim)
        w_qkv = np.concatenate([w[p + "attn.q.weight"] * scale, w[p + "attn.k.weight"], w[p + "attn.v.weight"]]).T
        b_qkv = np.concatenate([w[p + "attn.q.bias"] * scale, w[p + "attn.k.bias"], w[p + "attn.v.bias"]])
        if fusion.attention == "contrib":
            ctx = g.op("Attention", [x, g.weight(p + "attn.qkv.weight_t", w_qkv), g.weight(p + "attn.qkv.bias", b_qkv),
                                     mask_index], domain=MS, num_heads=heads)
        else:
            qkv = g.linear(x, g.weight(p + "attn.qkv.weight_t", w_qkv), g.weight(p + "attn.qkv.bias", b_qkv), p + "attn.qkv")
            q, k, v = g.op("Split", [qkv, g.const([a, a, a])], axis=-1, outputs=3)  # each (B, T, a)
            if fusion.attention == "mha":
                ctx = g.op("MultiHeadAttention", [q, k, v, "", mask_index], domain=MS, num_heads=heads, scale=1.0)
            else:
                q = g.transpose(g.reshape(q, [0, 0, heads, dims.head_dim]), [0, 2, 1, 3])  # (B, heads, T, hd)
                k = g.transpose(g.reshape(k, [0, 0, heads, dims.head_dim]), [0, 2, 3, 1])  # (B, heads, hd, T)
                v = g.transpose(g.reshape(v, [0, 0, heads, dims.head_dim]), [0, 2, 1, 3])  # (B, heads, T, hd)
                probs = g.op("Softmax", [g.op("Add", [g.op("MatMul", [q, k]), additive])], axis=-1)  # (B, heads, T, T)
                ctx = g.reshape(g.transpose(g.op("MatMul", [probs, v]), [0, 2, 1, 3]), [0, 0, a])  # (B, T, a)
        o = g.linear(ctx, w[p + "attn.o.weight"], None, p + "attn.o")
        x = _add_norm(g, x, o, w[p + "attn.o.bias"], w[p + "attn_norm.weight"], w[p + "attn_norm.bias"],
                      dims.norm_eps, p + "attn_norm", p + "attn.o", fusion.skip_norm)
        up = g.linear(x, w[p + "ffn.up.weight"], None, p + "ffn.up")
        up_bias = g.weight(p + "ffn.up.bias", w[p + "ffn.up.bias"])
        act = g.op("BiasGelu", [up, up_bias], domain=MS) if fusion.bias_gelu else g.gelu(g.op("Add", [up, up_bias]))
        down = g.linear(act, w[p + "ffn.down.weight"], None, p + "ffn.down")
        x = _add_norm(g, x, down, w[p + "ffn.down.bias"], w[p + "ffn_norm.weight"], w[p + "ffn_norm.bias"],
                      dims.norm_eps, p + "ffn_norm", p + "ffn.down", fusion.skip_norm)

    # mean over real tokens: (B, T, h) -> (B, h)
    m = g.op("Unsqueeze", [mask_f, g.const([-1])])  # (B, T, 1)
    total = g.op("ReduceSum", [g.op("Mul", [x, m]), g.const([1])], keepdims=0)
    count = g.op("Clip", [g.op("ReduceSum", [m, g.const([1])], keepdims=0), g.const(1.0, np.float32)])
    pooled = g.op("Div", [total, count])
    g.output("embeddings", pooled, FLOAT, ["batch", cfg.hidden])
    if dims.num_labels:
        logits = g.linear(pooled, w["head.weight"], w["head.bias"], "head")
        g.output("logits", logits, FLOAT, ["batch", dims.num_labels])


def _add_norm(g: GraphWriter, x: str, y: str, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
              name: str, bias_name: str, fused: bool) -> str:
    """LayerNorm(x + y + bias): the residual of a post-LN block (one SkipLayerNormalization when fused)."""
    b = g.weight(f"{bias_name}.bias", bias)
    if fused:
        return g.op("SkipLayerNormalization", [y, x, g.weight(f"{name}.weight", gamma), g.weight(f"{name}.bias", beta), b],
                    domain=MS, epsilon=float(eps))
    return g.layer_norm(g.op("Add", [x, g.op("Add", [y, b])]), gamma, beta, eps, name)
