"""Hugging Face checkpoints <-> our models: config conversion, explicit key maps, checked loading.

A key map is a list of (HF name, our name) templates with ``{i}`` for the layer index. The same table loads
a checkpoint and writes one that stock transformers reads, so the two directions cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, ConfigError
from ..spec.dims import ModelDims
from ..spec.subnet_config import SubnetConfig
from ..spec.vocab import ENCODER, Family

BERT_KEYS = [
    ("embeddings.word_embeddings.weight", "embeddings.word.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type.weight"),
    ("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "layers.{i}.attn.q.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "layers.{i}.attn.k.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "layers.{i}.attn.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "layers.{i}.attn.o.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "layers.{i}.attn_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.ffn.up.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.ffn.down.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "layers.{i}.ffn_norm.{p}"),
]
LLAMA_KEYS = [
    ("model.embed_tokens.weight", "embeddings.word.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weight"),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attn.q.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attn.k.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attn.v.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attn.o.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.ffn.gate.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.ffn.up.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.ffn.down.weight"),
    ("model.norm.weight", "final_norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
# Checkpoint tensors we know and deliberately do not use: buffers, the BERT pooler, and encoder task heads
# (a checkpoint saved from e.g. BertForSequenceClassification still holds a usable encoder).
IGNORED = re.compile(
    r"^(embeddings\.position_ids|pooler\..*|.*rotary_emb\.inv_freq"
    r"|cls\..*|classifier\..*|qa_outputs\..*|discriminator_predictions\..*)$"
)
# Encoder checkpoints saved from a task model carry the architecture's prefix.
ENCODER_PREFIXES = ("bert.", "roberta.", "electra.")


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{pattern}$")


def _translate(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    for hf, ours in table:
        src, dst = (ours, hf) if reverse else (hf, ours)
        m = _compile(src).match(key)
        if m:
            return dst.format(**m.groupdict())
    return None


def key_map(family: Family) -> list[tuple[str, str]]:
    return BERT_KEYS if family == ENCODER else LLAMA_KEYS


# ----- configs ------------------------------------------------------------------------------------------------
def dims_from_hf_config(hf: dict[str, Any]) -> ModelDims:
    """ModelDims from a transformers config.json; unsupported variants are refused by name."""
    model_type = hf.get("model_type")
    try:
        if model_type in ("bert", "roberta"):
            if hf.get("hidden_act", "gelu") != "gelu":
                raise ConfigError(f"hidden_act: {hf['hidden_act']!r} is not supported; supported: 'gelu'")
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise ConfigError("position_embedding_type: only 'absolute' is supported")
            heads = hf["num_attention_heads"]
            pad = hf.get("pad_token_id")
            return ModelDims(
                family="encoder", vocab_size=hf["vocab_size"], hidden=hf["hidden_size"],
                num_layers=hf["num_hidden_layers"], num_heads=heads, head_dim=hf["hidden_size"] // heads,
                ffn=hf["intermediate_size"], max_positions=hf["max_position_embeddings"],
                norm_eps=hf.get("layer_norm_eps", 1e-12), type_vocab_size=hf.get("type_vocab_size", 2),
                position_offset=(pad or 0) + 1 if model_type == "roberta" else 0, pad_token_id=pad,
            )
        if model_type == "llama":
            rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
            if rope.get("rope_type", "default") != "default":
                raise ConfigError(f"rope: {rope.get('rope_type')!r} scaling is not supported; supported: 'default'")
            if hf.get("attention_bias") or hf.get("mlp_bias"):
                raise ConfigError("attention_bias/mlp_bias: Llama checkpoints with biases are not supported")
            heads = hf["num_attention_heads"]
            return ModelDims(
                family="decoder", vocab_size=hf["vocab_size"], hidden=hf["hidden_size"],
                num_layers=hf["num_hidden_layers"], num_heads=heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, ffn=hf["intermediate_size"],
                max_positions=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
                num_kv_heads=hf.get("num_key_value_heads") or heads,
                rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), pad_token_id=hf.get("pad_token_id"),
            )
    except KeyError as err:
        raise CheckpointError(f"config.json: missing field {err.args[0]!r} for model_type {model_type!r}") from None
    raise CheckpointError(f"config.json: model_type {model_type!r} is not supported; supported: bert, roberta, llama")


def hf_config_for(dims: ModelDims, cfg: SubnetConfig) -> dict[str, Any] | None:
    """A stock transformers config describing subnet ``cfg``, or None when transformers cannot describe it."""
    return hf_config_or_reason(dims, cfg)[0]


def hf_config_or_reason(dims: ModelDims, cfg: SubnetConfig) -> tuple[dict[str, Any] | None, str | None]:
    """``(config, None)``, or ``(None, why)`` when stock transformers cannot describe subnet ``cfg``.

    Stock configs need uniform widths; BERT also derives head size as hidden / heads.
    """
    if not cfg.is_uniform:
        return None, "its layers have different widths; stock transformers configs need the same width in every layer"
    n, heads, ffn, h = len(cfg.layers), cfg.heads[0], cfg.ffn[0], cfg.hidden
    if dims.family == ENCODER:
        # Stock BERT heads pool the first token; ours pools the mean, so a headed subnet has no stock twin.
        if dims.num_labels:
            return None, "it has a classification head over mean pooling; stock BERT heads pool the first token"
        if dims.position_offset:
            return None, "its positions start at an offset that stock BERT does not have"
        if heads * dims.head_dim != h:
            return None, (f"{heads} heads x {dims.head_dim} != hidden {h}; stock BERT derives the head size as "
                          "hidden / heads")
        return {
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": dims.vocab_size,
            "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads, "intermediate_size": ffn,
            "hidden_act": "gelu", "max_position_embeddings": dims.max_positions,
            "type_vocab_size": dims.type_vocab_size, "layer_norm_eps": dims.norm_eps,
            "pad_token_id": dims.pad_token_id or 0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "add_pooling_layer": False,
        }, None
    if h % heads:
        return None, f"hidden {h} is not a multiple of {heads} heads, which transformers' LlamaConfig rejects"
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": dims.vocab_size,
        "hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads,
        "num_key_value_heads": heads // dims.group_size, "head_dim": dims.head_dim, "intermediate_size": ffn,
        "hidden_act": "silu", "max_position_embeddings": dims.max_positions, "rms_norm_eps": dims.norm_eps,
        "rope_theta": dims.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": dims.rope_theta},
        "tie_word_embeddings": dims.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "pad_token_id": dims.pad_token_id,
    }, None


# ----- tensors ------------------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle); a missing or corrupt file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"missing weight file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def read_manifest(path: Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """A JSON manifest whose ``"format"`` is one of ``formats``; CheckpointError naming the file otherwise (also when
    the file holds something other than an object)."""
    data = read_json(path)
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found not in formats:
        raise CheckpointError(f"{path}: format {found!r}, expected one of {list(formats)}")
    return data


def hf_to_ours(tensors: dict[str, torch.Tensor], dims: ModelDims) -> dict[str, torch.Tensor]:
    """Rename HF tensors to our names; unknown keys are an error, known-unused ones are dropped."""
    table, out, unknown = key_map(dims.family), {}, []
    for key, value in tensors.items():
        bare = next((key[len(p):] for p in ENCODER_PREFIXES if key.startswith(p)), key)
        if IGNORED.match(bare):
            continue
        ours = _translate(bare, table)
        if ours is None:
            unknown.append(key)
        elif ours == "lm_head.weight" and dims.tie_embeddings:
            continue  # tied: the embedding table is the head
        else:
            out[ours] = value
    if unknown:
        raise CheckpointError(f"checkpoint has {len(unknown)} tensor(s) this {dims.family} key map does not know, e.g. {unknown[:3]}")
    return out


def ours_to_hf(tensors: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    table = key_map(family)
    return {_translate(k, table, reverse=True): v for k, v in tensors.items()}


def check_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Every expected tensor present with its shape, nothing extra; errors name the tensor."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise CheckpointError(f"{source}: missing tensors {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, expected {shape}")
        if not state[k].is_floating_point():
            raise CheckpointError(f"{source}: tensor {k} has dtype {state[k].dtype}, expected a float type")
