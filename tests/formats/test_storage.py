"""Subnet folders and adapter stacks on disk: round trips, stock-transformers copies, atomic writes, mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.models import output, padded_batch, randomize_adapters
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

import slicer.formats.storage
from slicer.errors import AdapterMismatchError, CheckpointError
from slicer.formats.adapter_stack import STACK_META, STACK_WEIGHTS, load_adapter_stack, save_adapter_stack
from slicer.formats.storage import fingerprint, load_base, load_subnet, save_subnet
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.importance import compute_reordering
from slicer.nn.supernet import Supernet
from slicer.spec.dims import ModelDims
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or "adapter.A" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def supernet_for(dims: ModelDims, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    base = build_model(dims).eval()
    supernet = Supernet(base, AdapterSettings(rank=4)).eval()
    randomize(supernet, seed + 1)
    return supernet


def batch(dims: ModelDims) -> dict[str, torch.Tensor]:
    return padded_batch(dims, length=9, pad=3)


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


# ----- subnet folders -------------------------------------------------------------------------------------------------
def test_subnet_round_trip(tiny_dims, tmp_path, tokenizer_dir):
    supernet = supernet_for(tiny_dims)
    g = tiny_dims.group_size
    cfg = SubnetConfig.parse({"layers": [0, 2, 3], "heads": [g, 2 * g, g], "ffn": [16, 64, 40], "hidden": 24}, tiny_dims)
    subnet = supernet.extract(cfg)
    out = tmp_path / "sub"
    meta = save_subnet(subnet, out, tokenizer_from=tokenizer_dir, provenance={"base": "tiny", "reordered": False})
    assert json.loads((out / "mlfs_model.json").read_text()) == meta
    loaded = load_subnet(out)
    assert loaded.cfg == cfg and loaded.dims == tiny_dims
    inputs = batch(tiny_dims)
    assert torch.equal(output(loaded, inputs), output(subnet, inputs))
    count = cfg.param_count(tiny_dims)
    assert meta["config_key"] == cfg.key and meta["config"] == cfg.to_dict()
    assert meta["params"] == {"total": count.total, "embedding": count.embedding, "non_embedding": count.non_embedding}
    assert loaded.num_parameters() == meta["params"]["total"]
    assert meta["weight_bytes"]["fp16"] == 2 * count.total
    assert meta["provenance"] == {"base": "tiny", "reordered": False}
    assert sorted(meta["tokenizer_files"]) == ["tokenizer.json", "vocab.txt"]
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert meta["transformers_checkpoint"] is None and not (out / "transformers").exists()  # per-layer widths


def test_saving_into_a_non_empty_folder_needs_overwrite(encoder_dims, tmp_path):
    subnet = supernet_for(encoder_dims).extract(SubnetConfig.uniform(encoder_dims, 2, 2, 32))
    out = tmp_path / "sub"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        save_subnet(subnet, out)
    assert (out / "keep.txt").read_text() == "precious"
    save_subnet(subnet, out, overwrite=True)
    assert not (out / "keep.txt").exists() and load_subnet(out).cfg == subnet.cfg
    empty = tmp_path / "empty"
    empty.mkdir()
    save_subnet(subnet, empty)  # an empty folder is fine
    assert (empty / "model.safetensors").is_file()


def _failing_save_file(*args, **kwargs):
    raise OSError("disk full")


def test_a_failed_save_leaves_no_folder(encoder_dims, tmp_path, monkeypatch):
    subnet = supernet_for(encoder_dims).extract(SubnetConfig.uniform(encoder_dims, 2, 2, 32))
    monkeypatch.setattr(slicer.formats.storage, "save_file", _failing_save_file)
    out = tmp_path / "sub"
    with pytest.raises(OSError, match="disk full"):
        save_subnet(subnet, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no *.incomplete leftovers either


def test_a_failed_overwrite_keeps_the_old_folder(encoder_dims, tmp_path, monkeypatch):
    supernet = supernet_for(encoder_dims)
    out = tmp_path / "sub"
    old = save_subnet(supernet.extract(SubnetConfig.uniform(encoder_dims, 2, 2, 32)), out)
    monkeypatch.setattr(slicer.formats.storage, "save_file", _failing_save_file)
    with pytest.raises(OSError):
        save_subnet(supernet.extract(SubnetConfig.uniform(encoder_dims, 3, 4, 64)), out, overwrite=True)
    assert json.loads((out / "mlfs_model.json").read_text())["config_key"] == old["config_key"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_uniform_decoder_slice_loads_in_stock_transformers(decoder_dims, tmp_path):
    supernet = supernet_for(decoder_dims)
    cfg = SubnetConfig.uniform(decoder_dims, 2, 3, 40, hidden=42)  # q: 3 x 8 = 24 != hidden 42
    subnet = supernet.extract(cfg)
    out = tmp_path / "sub"
    meta = save_subnet(subnet, out)
    assert meta["transformers_checkpoint"] == "transformers"
    hf = AutoModelForCausalLM.from_pretrained(out / "transformers").eval()
    assert hf.config.num_hidden_layers == 2 and hf.config.num_key_value_heads == 1 and hf.config.hidden_size == 42
    assert sum(p.numel() for p in hf.parameters()) == cfg.param_count(decoder_dims).total
    inputs = batch(decoder_dims)
    with torch.no_grad():
        theirs = hf(**inputs).logits
    ours = output(subnet, inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(theirs[real], ours[real], rtol=0, atol=1e-5)
    # it is the slice, not the teacher: the full model disagrees
    assert not torch.allclose(output(supernet, inputs)[real], ours[real], atol=1e-3)


def test_a_transformers_folder_is_always_loadable(decoder_dims, tmp_path):
    """transformers >= 5.x refuses a LlamaConfig whose hidden size is not a multiple of the head count (even with an
    explicit head_dim), so such a slice must not get a transformers/ folder it cannot load."""
    subnet = supernet_for(decoder_dims).extract(SubnetConfig.uniform(decoder_dims, 2, 3, 40, hidden=40))
    meta = save_subnet(subnet, tmp_path / "sub")
    if meta["transformers_checkpoint"] is not None:
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "sub" / "transformers").eval()
        inputs = batch(decoder_dims)
        with torch.no_grad():
            theirs = hf(**inputs).logits
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(theirs[real], output(subnet, inputs)[real], rtol=0, atol=1e-5)
    else:
        assert not (tmp_path / "sub" / "transformers").exists()


def test_uniform_encoder_slice_loads_in_stock_transformers(encoder_dims, tmp_path):
    supernet = supernet_for(encoder_dims)
    cfg = SubnetConfig.uniform(encoder_dims, 3, 2, 48, hidden=16)  # 2 heads x head_dim 8 == hidden 16
    subnet = supernet.extract(cfg)
    out = tmp_path / "sub"
    assert save_subnet(subnet, out)["transformers_checkpoint"] == "transformers"
    hf = AutoModel.from_pretrained(out / "transformers").eval()
    assert hf.config.num_attention_heads == 2 and hf.config.hidden_size == 16 and hf.config.intermediate_size == 48
    inputs = batch(encoder_dims)
    with torch.no_grad():
        theirs = hf(**inputs).last_hidden_state
    ours = output(subnet, inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(theirs[real], ours[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "spec"),
    [
        ("decoder", {"layers": 2, "heads": [3, 6]}),
        ("decoder", {"layers": 2, "ffn": [32, 64]}),
        ("encoder", {"layers": 2, "heads": [2, 4]}),
        ("encoder", {"layers": 2, "heads": 2}),  # uniform, but BERT would derive head size 32 / 2 = 16, not 8
    ],
)
def test_configs_transformers_cannot_describe_write_no_transformers_folder(family, spec, encoder_dims, decoder_dims, tmp_path):
    dims = encoder_dims if family == "encoder" else decoder_dims
    subnet = supernet_for(dims).extract(SubnetConfig.parse(spec, dims))
    meta = save_subnet(subnet, tmp_path / "sub")
    assert meta["transformers_checkpoint"] is None
    assert not (tmp_path / "sub" / "transformers").exists()
    assert load_subnet(tmp_path / "sub").cfg == subnet.cfg


def test_load_subnet_refuses_foreign_or_tampered_folders(encoder_dims, tmp_path):
    out = tmp_path / "sub"
    save_subnet(supernet_for(encoder_dims).extract(SubnetConfig.uniform(encoder_dims, 2, 2, 32)), out)
    meta = json.loads((out / "mlfs_model.json").read_text())
    meta["config"]["ffn"] = [48, 48]
    (out / "mlfs_model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"ffn\.up\.weight has shape \(32, 32\), expected \(48, 32\)"):
        load_subnet(out)
    (out / "mlfs_model.json").write_text(json.dumps({**meta, "format": "something-else/9"}))
    with pytest.raises(CheckpointError, match="format 'something-else/9'"):
        load_subnet(out)


# ----- adapter stacks ---------------------------------------------------------------------------------------------------
@pytest.fixture
def base_folder(tiny_dims, tmp_path) -> Path:
    """A Hugging Face checkpoint of a random tiny teacher (written through save_subnet's transformers copy)."""
    torch.manual_seed(5)
    teacher = build_model(tiny_dims).eval()
    randomize(teacher, 6)
    save_subnet(teacher, tmp_path / "teacher")
    return tmp_path / "teacher" / "transformers"


def trained_stack(base_folder: Path, out: Path) -> tuple[Supernet, str]:
    base = load_base(base_folder)
    reordering = compute_reordering(base, method="magnitude", hidden=True)
    reordering.apply(base)
    supernet = Supernet(base, AdapterSettings(rank=4)).eval()
    randomize_adapters(supernet, 7)
    supernet.set_stage(2)
    fp = fingerprint(base_folder)
    save_adapter_stack(supernet, out, fp, reordering)
    return supernet, fp


def test_adapter_stack_round_trip(tiny_dims, base_folder, tmp_path):
    supernet, fp = trained_stack(base_folder, tmp_path / "stack")
    fresh = load_base(base_folder)
    original = {k: v.clone() for k, v in fresh.state_dict().items()}
    loaded = load_adapter_stack(fresh, tmp_path / "stack", fp)
    assert loaded.stage == 2 and loaded.settings == supernet.settings and loaded.space == supernet.space
    # the stack carried its reordering: the fresh base was permuted the same way before the adapters went on
    assert any(not torch.equal(original[k], v) for k, v in loaded.base_state().items())
    for k, v in supernet.base_state().items():
        assert torch.equal(loaded.base_state()[k], v), k
    inputs = batch(tiny_dims)
    g = tiny_dims.group_size
    for cfg in [SubnetConfig.maximal(tiny_dims), SubnetConfig.uniform(tiny_dims, 2, g, 16, 20),
                SubnetConfig.parse({"layers": [1, 3], "heads": [2 * g, g], "ffn": [5, 60]}, tiny_dims)]:
        assert torch.equal(output(loaded.extract(cfg), inputs), output(supernet.extract(cfg), inputs)), cfg.describe()


def test_adapter_stack_for_another_base_is_refused(base_folder, tmp_path):
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    other = "f" * 64
    with pytest.raises(AdapterMismatchError) as err:
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", other)
    assert fp[:12] in str(err.value) and other[:12] in str(err.value)


def test_adapter_stack_for_other_dims_is_refused(tiny_dims, base_folder, tmp_path):
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    meta = json.loads((tmp_path / "stack" / STACK_META).read_text())
    meta["base_dims"]["ffn"] = 128
    (tmp_path / "stack" / STACK_META).write_text(json.dumps(meta))
    with pytest.raises(AdapterMismatchError, match="other model dimensions"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)


def test_adapter_stack_with_another_rank_names_the_tensor(base_folder, tmp_path):
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    path = tmp_path / "stack" / STACK_META
    meta = json.loads(path.read_text())
    meta["rank"] = 8
    path.write_text(json.dumps(meta))
    with pytest.raises(AdapterMismatchError, match=r"wrong shape.*layers\.0\.attn\.\w+\.[AB]\.0"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)


def test_adapter_stack_with_a_wrong_shape_names_the_tensor(base_folder, tmp_path):
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    path = tmp_path / "stack" / STACK_WEIGHTS
    tensors = load_file(str(path))
    tensors["layers.2.ffn.up.B.1"] = tensors["layers.2.ffn.up.B.1"][:, :-1].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(AdapterMismatchError, match=r"layers\.2\.ffn\.up\.B\.1"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)


def test_adapter_stack_with_a_missing_tensor_names_it(base_folder, tmp_path):
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    path = tmp_path / "stack" / STACK_WEIGHTS
    tensors = load_file(str(path))
    del tensors["layers.1.attn.v.A.0"]
    save_file(tensors, str(path))
    with pytest.raises(AdapterMismatchError, match=r"missing \['layers\.1\.attn\.v\.A\.0'\]"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)


def test_fingerprint_tracks_config_and_weights(base_folder, tmp_path):
    fp = fingerprint(base_folder)
    assert fp == fingerprint(base_folder) and len(fp) == 64
    cfg = json.loads((base_folder / "config.json").read_text())
    (base_folder / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-5, "layer_norm_eps": 1e-5}))
    assert fingerprint(base_folder) != fp
    (base_folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing file"):
        fingerprint(base_folder)


def test_a_failed_adapter_load_leaves_the_base_untouched(base_folder, tmp_path):
    """A stack that does not fit must not leave the caller's base reordered or wrapped in adapters."""
    _, fp = trained_stack(base_folder, tmp_path / "stack")
    path = tmp_path / "stack" / STACK_WEIGHTS
    tensors = load_file(str(path))
    del tensors["layers.1.attn.v.A.0"]
    save_file(tensors, str(path))
    base = load_base(base_folder)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(AdapterMismatchError):
        load_adapter_stack(base, tmp_path / "stack", fp)
    assert base.state_dict().keys() == before.keys()
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k
