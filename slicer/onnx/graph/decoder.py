"""The decoder graph (Llama layout, slicer/decoder.py): pre-RMSNorm, SwiGLU, RoPE, grouped-query attention with
a key/value cache, tied or separate LM head.

Interface: ``input_ids`` (B, T), ``attention_mask`` (B, P+T), ``position_ids`` (B, T), ``past.{n}.key|value``
(B, kv_heads, P, hd) -> ``logits`` (B, T, vocab), ``present.{n}.key|value`` (B, kv_heads, P+T, hd).
"""

from __future__ import annotations

import math

import numpy as np

from ...spec.dims import ModelDims
from ...spec.subnet_config import SubnetConfig
from .ops import BOOL, FLOAT, INT64, MASK_VALUE, MS, GraphWriter

Weights = dict[str, np.ndarray]


def build_decoder(g: GraphWriter, dims: ModelDims, cfg: SubnetConfig, w: Weights, fused: bool) -> None:
    hd, group = dims.head_dim, dims.group_size
    ids = g.input("input_ids", INT64, ["batch", "seq"])
    mask = g.input("attention_mask", INT64, ["batch", "total"])
    position_ids = g.input("position_ids", INT64, ["batch", "seq"])
    past = []
    for n, heads in enumerate(cfg.heads):
        kv = heads // group
        past.append(tuple(g.input(f"past.{n}.{t}", FLOAT, ["batch", kv, "past", hd]) for t in ("key", "value")))

    embedding = g.weight("embeddings.word.weight", w["embeddings.word.weight"])  # (V, h)
    x = g.op("Gather", [embedding, ids])  # (B, T, h)

    # Query i (absolute position P+i) may see key j <= P+i, and only real (unpadded) keys: (B, 1, T, P+T)
    total, seq = g.scalar(g.dim(mask, 1)), g.scalar(g.dim(ids, 1))
    zero, one = g.const(0, shape=()), g.const(1, shape=())
    keys = g.op("Range", [zero, total, one])  # (P+T,)
    queries = g.op("Range", [g.op("Sub", [total, seq]), total, one])  # (T,)
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [keys, g.const([0])]), g.op("Unsqueeze", [queries, g.const([1])])])
    real = g.op("Unsqueeze", [g.op("Cast", [mask], to=BOOL), g.const([1, 2])])  # (B, 1, 1, P+T)
    additive = g.op("Where", [g.op("And", [causal, real]), g.const(0.0, np.float32), g.const(MASK_VALUE, np.float32)])

    # RoPE tables for these positions, shared by every layer: (B, 1, T, hd), half-split layout
    exponents = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)
    inv_freq = (1.0 / np.power(np.float32(dims.rope_theta), exponents)).astype(np.float32)  # (hd/2,)
    freqs = g.op("Mul", [g.op("Unsqueeze", [g.op("Cast", [position_ids], to=FLOAT), g.const([-1])]),
                         g.weight("rope.inv_freq", inv_freq)])  # (B, T, hd/2)
    emb = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.const([1])])  # (B, 1, T, hd)
    cos, sin = g.op("Cos", [emb]), g.op("Sin", [emb])

    def rotary(t: str) -> str:
        x1, x2 = g.op("Split", [t, g.const([hd // 2, hd // 2])], axis=-1, outputs=2)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotated, sin])])

    residual_pending = None  # fused mode: the FFN output not yet added to x (SkipSimplifiedLayerNormalization adds it)
    for n, heads in enumerate(cfg.heads):
        p, kv = f"layers.{n}.", heads // group
        h, x = _pre_norm(g, x, residual_pending, w[p + "attn_norm.weight"], dims.norm_eps, p + "attn_norm", fused)
        q_w = w[p + "attn.q.weight"] / np.float32(math.sqrt(hd))  # 1/sqrt(hd) folded in (RoPE is linear)
        w_qkv = np.concatenate([q_w, w[p + "attn.k.weight"], w[p + "attn.v.weight"]]).T  # (h, (heads + 2 kv) hd)
        qkv = g.linear(h, g.weight(p + "attn.qkv.weight_t", w_qkv), None, p + "attn.qkv")
        q, k, v = g.op("Split", [qkv, g.const([heads * hd, kv * hd, kv * hd])], axis=-1, outputs=3)
        q = rotary(g.transpose(g.reshape(q, [0, 0, heads, hd]), [0, 2, 1, 3]))  # (B, heads, T, hd)
        k = rotary(g.transpose(g.reshape(k, [0, 0, kv, hd]), [0, 2, 1, 3]))  # (B, kv, T, hd)
        v = g.transpose(g.reshape(v, [0, 0, kv, hd]), [0, 2, 1, 3])
        k = g.op("Concat", [past[n][0], k], axis=2, out=f"present.{n}.key")  # (B, kv, P+T, hd)
        v = g.op("Concat", [past[n][1], v], axis=2, out=f"present.{n}.value")
        # Grouped query heads share a key/value head: fold the group into the query axis instead of repeating k/v.
        qg = g.reshape(q, [0, kv, -1, hd])  # (B, kv, group*T, hd)
        scores = g.reshape(g.op("MatMul", [qg, g.transpose(k, [0, 1, 3, 2])]), [0, heads, -1, 0])  # (B, heads, T, P+T)
        probs = g.op("Softmax", [g.op("Add", [scores, additive])], axis=-1)
        ctx = g.op("MatMul", [g.reshape(probs, [0, kv, -1, 0]), v])  # (B, kv, group*T, hd)
        ctx = g.reshape(g.transpose(g.reshape(ctx, [0, heads, -1, hd]), [0, 2, 1, 3]), [0, 0, heads * hd])
        attn = g.linear(ctx, w[p + "attn.o.weight"], None, p + "attn.o")  # (B, T, h)
        h, x = _pre_norm(g, x, attn, w[p + "ffn_norm.weight"], dims.norm_eps, p + "ffn_norm", fused)
        gate = g.linear(h, w[p + "ffn.gate.weight"], None, p + "ffn.gate")
        up = g.linear(h, w[p + "ffn.up.weight"], None, p + "ffn.up")
        down = g.linear(g.op("Mul", [g.silu(gate), up]), w[p + "ffn.down.weight"], None, p + "ffn.down")
        if fused:
            residual_pending = down
        else:
            x = g.op("Add", [x, down])

    x, _ = _pre_norm(g, x, residual_pending, w["final_norm.weight"], dims.norm_eps, "final_norm", fused)
    # The LM head reads its (V, h) weight as stored, transposed by Gemm itself: a tied head then shares the embedding's
    # one initializer, and no (h, V) copy is made, neither here nor by onnxruntime when it opens the graph (it folded
    # a Transpose of the 113 MB SmolLM2 embedding into a second initializer). Gemm is 2-D: (B*T, h) @ (V, h)^T.
    head = embedding if dims.tie_embeddings else g.weight("lm_head.weight", w["lm_head.weight"])
    flat = g.op("Gemm", [g.reshape(x, [-1, cfg.hidden]), head], transB=1, name="lm_head.gemm")  # (B*T, V)
    logits = g.op("Reshape", [flat, g.op("Concat", [g.op("Shape", [ids]), g.const([dims.vocab_size])], axis=0)])
    g.output("logits", logits, FLOAT, ["batch", "seq", dims.vocab_size])
    for n, heads in enumerate(cfg.heads):
        for t in ("key", "value"):
            g.output(f"present.{n}.{t}", f"present.{n}.{t}", FLOAT, ["batch", heads // group, "past + seq", hd])


def _pre_norm(g: GraphWriter, x: str, add: str | None, gamma: np.ndarray, eps: float, name: str,
              fused: bool) -> tuple[str, str]:
    """(RMSNorm(x + add), x + add): the normed input of the next block and the residual stream."""
    if not fused:
        x = x if add is None else g.op("Add", [x, add])
        return g.rms_norm(x, gamma, eps, name), x
    weight = g.weight(f"{name}.weight", gamma)
    if add is None:
        return g.op("SimplifiedLayerNormalization", [x, weight], axis=-1, epsilon=float(eps), stash_type=1), x
    normed, _, _, summed = g.op("SkipSimplifiedLayerNormalization", [x, add, weight], outputs=4, domain=MS,
                                epsilon=float(eps))
    return normed, summed
