"""Artifacts a chat device can use (issue 18.5): a decoder's manifest carries the teacher's chat template, special
and stop tokens and generation defaults, and the client's generate() stops at the manifest's stop tokens."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.store import save_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from slicer import SubnetConfig, export_to_folder, open_supernet
from slicer.formats.generation import TextGeneration

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory):
    """A tiny Llama folder with the files a chat model's Hugging Face folder has."""
    folder = tmp_path_factory.mktemp("chat-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                                 tie_word_embeddings=True, eos_token_id=1)).save_pretrained(folder)
    save_tokenizer(folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [{"id": 3, "content": "w1", "special": True, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False}]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "eos_token": "w1",
                                                               "bos_token": {"content": "[PAD]"}, "pad_token": "[PAD]"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5], "temperature": 0.7,
                                                               "top_p": 0.9, "transformers_version": "5.0"}))
    return folder


def test_the_teachers_files_are_read_as_transformers_reads_them(chat_teacher, tmp_path):
    info = TextGeneration.from_folder(chat_teacher)
    assert info.chat_template == TEMPLATE
    assert info.special_tokens == {"eos_token": "w1", "bos_token": "[PAD]", "pad_token": "[PAD]"}
    assert info.stop_token_ids == [1, 5, 3]  # generation_config's eos ids, then the tokenizer's eos token
    assert info.defaults == {"temperature": 0.7, "top_p": 0.9}  # transformers' bookkeeping left out
    assert TextGeneration.from_dict(info.to_dict()) == info
    (tmp_path / "chat_template.jinja").write_text("newer layout")  # a template file wins over the config's
    (tmp_path / "tokenizer_config.json").write_text((chat_teacher / "tokenizer_config.json").read_text())
    assert TextGeneration.from_folder(tmp_path).chat_template == "newer layout"
    assert TextGeneration.from_folder(tmp_path / "absent") == TextGeneration()


def test_a_decoder_artifact_carries_them_and_generate_stops_at_the_stop_tokens(chat_teacher, tmp_path):
    from client_sdk.model import ModelHandle

    opened = open_supernet(str(chat_teacher))
    manifest = export_to_folder(opened, SubnetConfig.maximal(opened.supernet.dims), tmp_path / "art")
    assert TextGeneration.from_dict(manifest["generation"]) == TextGeneration.from_folder(chat_teacher)

    handle = ModelHandle(tmp_path / "art", manifest, "a" * 64)
    free = {**manifest, "generation": {**manifest["generation"], "stop_token_ids": []},
            "device": {**manifest["device"], "tokenizer": {**manifest["device"]["tokenizer"], "eos_token_id": None}}}
    first = ModelHandle(tmp_path / "art", free, "a" * 64).generate("w5 w6 w7", max_new_tokens=4)
    assert first.finish_reason == "length" and len(first.token_ids) == 4
    stopped = {**free, "generation": {**free["generation"], "stop_token_ids": [first.token_ids[0]]}}
    out = ModelHandle(tmp_path / "art", stopped, "a" * 64).generate("w5 w6 w7", max_new_tokens=4)
    assert out.finish_reason == "stop" and out.token_ids == []  # by default, no argument needed
    assert {1, 5, 3} <= handle.eos_ids
