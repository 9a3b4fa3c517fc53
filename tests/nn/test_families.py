"""Our encoder and decoder reproduce transformers' own models from their checkpoints; bad checkpoints are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaModel,
)

from slicer.errors import CheckpointError, ConfigError
from slicer.formats.storage import load_base
from slicer.nn.factory import build_model

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB, SEQ, PAD_LEN = 97, 12, 4
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, hidden_act="gelu", attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter distinct and non-trivial (norm weights not 1, biases not 0), so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def inputs(pad_id: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of random ids (never the pad id); the second row is padded at its end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, -PAD_LEN:] = 0
    ids[1, -PAD_LEN:] = pad_id
    return ids, mask


def save_hf(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**COMMON, type_vocab_size=2)).eval()
    randomize(model, 1)
    return save_hf(model, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def roberta_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(**COMMON, type_vocab_size=1, pad_token_id=1)).eval()
    randomize(model, 2)
    return save_hf(model, tmp_path_factory.mktemp("roberta"))


def llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=tie,
                      rms_norm_eps=1e-6, rope_theta=500.0)
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, 3)
    return model


# ----- parity ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "fixture", "pad_id"), [(BertModel, "bert_folder", 0), (RobertaModel, "roberta_folder", 1)])
def test_encoder_reproduces_transformers(cls, fixture, pad_id, request):
    folder = request.getfixturevalue(fixture)
    theirs = cls.from_pretrained(folder).eval()
    ours = load_base(folder)
    assert ours.dims.family == "encoder" and ours.dims.position_offset == (2 if pad_id == 1 else 0)
    ids, mask = inputs(pad_id)
    token_types = torch.zeros_like(ids)
    if cls is BertModel:  # exercise the token-type table too
        token_types[:, SEQ // 2 :] = 1
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
        got = ours(ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
    real = mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    # the comparison is sharp: another input gives another output
    assert (got[0] - expected[1]).abs().max() > 1e-2


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_reproduces_transformers(tie, tmp_path):
    theirs = llama(tie)
    folder = save_hf(theirs, tmp_path / "llama")
    ours = load_base(folder)
    dims = ours.dims
    assert (dims.family, dims.num_kv_heads, dims.head_dim, dims.tie_embeddings, dims.rope_theta) == ("decoder", 2, 8, tie, 500.0)
    ids, mask = inputs(pad_id=0)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        got_unmasked = ours(ids[:1]).logits
    assert got.shape == expected.shape == (2, SEQ, VOCAB)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_unmasked, got[:1], rtol=0, atol=1e-5)
    if tie:
        assert "lm_head.weight" not in dict(ours.named_parameters())
    else:
        assert not torch.equal(ours.lm_head.weight, ours.embeddings.word.weight)


def test_decoder_is_causal(tmp_path):
    ours = load_base(save_hf(llama(True), tmp_path / "llama"))
    ids, _ = inputs(pad_id=0)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        a, b = ours(ids).logits, ours(changed).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_loaded_base_is_an_elastic_eval_model(bert_folder):
    model = load_base(bert_folder)
    assert model.is_elastic and not model.training
    assert model.dims.num_layers == 3 and model.dims.head_dim == 8 and model.dims.type_vocab_size == 2
    model.check_shapes()


# ----- bad checkpoints -----------------------------------------------------------------------------------------------
@pytest.fixture
def bert_copy(bert_folder, tmp_path) -> Path:
    folder = tmp_path / "bert-copy"
    shutil.copytree(bert_folder, folder)
    return folder


def rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def rewrite_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unknown_tensor_key(bert_copy):
    rewrite_weights(bert_copy, lambda t: t.update({"encoder.layer.0.attention.self.rotation.weight": torch.zeros(32, 32)}))
    with pytest.raises(CheckpointError, match=r"does not know.*encoder\.layer\.0\.attention\.self\.rotation\.weight"):
        load_base(bert_copy)


def test_wrong_shape(bert_copy):
    def edit(t):
        t["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(48, 32)

    rewrite_weights(bert_copy, edit)
    with pytest.raises(CheckpointError, match=r"layers\.1\.ffn\.up\.weight has shape \(48, 32\), expected \(64, 32\)"):
        load_base(bert_copy)


def test_missing_tensor(bert_copy):
    rewrite_weights(bert_copy, lambda t: t.pop("encoder.layer.2.output.LayerNorm.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['layers\.2\.ffn_norm\.bias'\]"):
        load_base(bert_copy)


def test_extra_layer_in_weights(bert_copy):
    rewrite_config(bert_copy, num_hidden_layers=2)
    with pytest.raises(CheckpointError, match=r"unexpected \['layers\.2\."):
        load_base(bert_copy)


def test_integer_weights_are_refused(bert_copy):
    def edit(t):
        t["embeddings.LayerNorm.weight"] = torch.ones(32, dtype=torch.int32)

    rewrite_weights(bert_copy, edit)
    with pytest.raises(CheckpointError, match=r"embeddings\.norm\.weight has dtype"):
        load_base(bert_copy)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(bert_copy, damage):
    path = bert_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x93NUMPY" + bytes(range(256)) * 8, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_base(bert_copy)


def test_missing_files(bert_copy, tmp_path):
    (bert_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weight file"):
        load_base(bert_copy)
    (bert_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing file: .*config\.json"):
        load_base(bert_copy)
    with pytest.raises(CheckpointError, match="not found"):
        load_base(tmp_path / "no-such-model")


def test_config_that_is_not_json(bert_copy):
    (bert_copy / "config.json").write_text("{'model_type': 'bert'")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_base(bert_copy)


def test_unsupported_model_type(bert_copy):
    rewrite_config(bert_copy, model_type="gpt2")
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported; supported: bert, roberta, llama"):
        load_base(bert_copy)


def test_config_missing_a_field(bert_copy):
    path = bert_copy / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["intermediate_size"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing field 'intermediate_size'"):
        load_base(bert_copy)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"hidden_act": "relu"}, "hidden_act: 'relu' is not supported; supported: 'gelu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ],
)
def test_unsupported_encoder_variants(bert_copy, changes, expected):
    rewrite_config(bert_copy, **changes)
    with pytest.raises(ConfigError, match=expected):
        load_base(bert_copy)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}}, "rope: 'llama3'"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_unsupported_decoder_variants(tmp_path, changes, expected):
    folder = save_hf(llama(True), tmp_path / "llama")
    rewrite_config(folder, **changes)
    with pytest.raises(ConfigError, match=expected):
        load_base(folder)


@torch.no_grad()
def test_decoder_key_value_cache_gives_the_same_logits_as_a_full_pass(decoder_dims):
    """Token-by-token generation with the cache equals one pass over the whole sequence (what ONNX export relies on)."""
    torch.manual_seed(0)
    model = build_model(decoder_dims).eval().double()
    ids = torch.randint(1, decoder_dims.vocab_size, (2, 9))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    steps = [out.logits]
    past = out.past_key_values
    for t in range(5, 9):
        out = model(ids[:, t : t + 1], attention_mask=torch.ones(2, t + 1), past_key_values=past, use_cache=True)
        steps.append(out.logits)
        past = out.past_key_values
    assert past[0][0].shape == (2, decoder_dims.num_kv_heads, 9, decoder_dims.head_dim)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)


@torch.no_grad()
def test_decoder_cache_matches_transformers_generation(tmp_path):
    """Greedy generation with our cache reproduces transformers' generate() on the same checkpoint."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True,
                      initializer_range=0.5, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    theirs = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    theirs.generation_config.eos_token_id = None
    ours = load_base(tmp_path)
    prompt = torch.tensor([[5, 17, 33, 2]])
    expected = theirs.generate(prompt, max_new_tokens=6, do_sample=False)[0, 4:].tolist()
    out = ours(prompt, use_cache=True)
    generated, past = [], out.past_key_values
    for _ in range(6):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(nxt.item())
        out = ours(nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
    assert generated == expected
    assert len(set(generated)) > 2  # a sequence that could have gone wrong, not one token repeated
