"""The two real teachers, prepared once per machine into the data home (slow: smollm2 dequantises ~1 min once)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from slicer.formats.teachers import count_safetensors_params, list_teachers, prepare_teacher, resolve_base

pytestmark = pytest.mark.slow


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _assert_prepared_again_instantly(name: str, folder: Path) -> None:
    start = time.perf_counter()
    assert prepare_teacher(name, home=folder.parent.parent) == folder
    assert time.perf_counter() - start < 1.0


def test_minilm_prepared(prepared_teacher):
    folder = prepared_teacher("minilm")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "mlfs_teacher.json"):
        assert (folder / f).is_file(), f
    cfg = _config(folder)
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == ("bert", 384, 6, 12, 1536, 30522)
    # embedding = word + position + token-type tables and the embedding LayerNorm (everything under embeddings.)
    assert count_safetensors_params(folder) == (22_713_216, 11_918_592)
    meta = json.loads((folder / "mlfs_teacher.json").read_text())
    assert (meta["params_total"], meta["params_embedding"]) == (22_713_216, 11_918_592)
    assert resolve_base("minilm", home=folder.parent.parent) == folder
    _assert_prepared_again_instantly("minilm", folder)


def test_smollm2_prepared(prepared_teacher):
    from safetensors import safe_open

    folder = prepared_teacher("smollm2")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "mlfs_teacher.json"):
        assert (folder / f).is_file(), f
    cfg = _config(folder)
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]) == (576, 30, 9, 3, 64, 1536, 49152)
    rope_theta = cfg.get("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta"))
    assert rope_theta == 100_000.0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F32"}
    assert len(keys) == 2 + 30 * 9  # embed_tokens, final norm, 9 tensors per layer; lm_head is tied
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" not in keys
    assert count_safetensors_params(folder) == (134_515_008, 28_311_552)
    _assert_prepared_again_instantly("smollm2", folder)


@torch.no_grad()
def test_smollm2_loads_back_and_writes_code(prepared_teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepared_teacher("smollm2")
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == model.config.eos_token_id == 2
    ids = tok("def fibonacci(n):", return_tensors="pt")
    out = model.eval().generate(**ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:])
    # q/k un-permuted wrongly or weights garbled would give word salad; a working model writes Python.
    assert "return" in text and "n" in text, text


def test_list_teachers_reports_prepared(prepared_teacher):
    home = prepared_teacher("minilm").parent.parent
    prepared_teacher("smollm2")
    info = {t.name: t for t in list_teachers(home=home)}
    assert info["minilm"].prepared and info["minilm"].params_total == 22_713_216
    assert info["smollm2"].prepared and info["smollm2"].family == "decoder"
    assert info["smollm2"].params_total == 134_515_008
