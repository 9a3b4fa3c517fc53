"""Integration tests on the real teachers (prepared once per machine into the data home)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from slicer.data.calibration import calibration_batches
from slicer.formats.storage import load_base, load_subnet
from slicer.nn.supernet import Supernet
from slicer.spec.subnet_config import SubnetConfig
from slicer.train.reorder import reorder_by_importance

pytestmark = pytest.mark.slow


def _batch(folder, family, n=8, max_len=64):
    return calibration_batches(folder, family, n=n, max_len=max_len, batch_size=n)[0]


@torch.no_grad()
def test_minilm_maxnet_reproduces_transformers(prepared_teacher):
    folder = prepared_teacher("minilm")
    batch = _batch(folder, "encoder")
    ours = load_base(folder)(**batch).last_hidden_state
    theirs = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max().item() < 1e-4


@torch.no_grad()
def test_smollm2_maxnet_reproduces_transformers(prepared_teacher):
    folder = prepared_teacher("smollm2")
    batch = _batch(folder, "decoder", n=2, max_len=48)
    ours = load_base(folder)(**batch).logits
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()(**batch).logits
    real = batch["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
@torch.no_grad()
def test_importance_reordering_preserves_the_teacher(prepared_teacher, name):
    folder = prepared_teacher(name)
    model = load_base(folder)
    family = model.dims.family
    batch = _batch(folder, family, n=2, max_len=48)
    before = model(**batch)
    with torch.enable_grad():
        reordering = reorder_by_importance(model, folder)
    after = model(**batch)
    key = "logits" if family == "decoder" else "last_hidden_state"
    real = batch["attention_mask"].bool()
    diff = (getattr(after, key) - getattr(before, key))[real].abs().max().item()
    scale = getattr(before, key)[real].abs().max().item()
    assert diff < 1e-5 * max(1.0, scale)
    # The permutation is not the identity: the ranking did something.
    assert any(not torch.equal(p, torch.arange(len(p))) for p in reordering.ffn)


def test_cli_slices_minilm_to_a_quarter_of_its_layers(prepared_teacher, tmp_path):
    prepared_teacher("minilm")
    out = tmp_path / "minilm-small"
    r = subprocess.run(
        [sys.executable, "-m", "slicer.cli", "slice", "--base", "minilm", "--config", '{"layers": 3, "heads": 6, "ffn": 768}', "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ), timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "2.67M (2,665,152) non-embedding, 25.0% of the teacher's" in r.stdout
    subnet = load_subnet(out)
    assert subnet.num_parameters() == 14_583_744
    assert (out / "tokenizer.json").is_file()


@torch.no_grad()
def test_extracted_minilm_equals_supernet_and_round_trips(prepared_teacher, tmp_path):
    folder = prepared_teacher("minilm")
    net = Supernet(load_base(folder))
    for stack in net.adapter_stacks().values():
        for a in stack.A:
            torch.nn.init.normal_(a, std=0.02)
    cfg = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, net.dims)
    batch = _batch(folder, "encoder")
    net.set_active(cfg)
    elastic = net(**batch).last_hidden_state
    small = net.extract(cfg)
    assert (small(**batch).last_hidden_state - elastic).abs().max().item() < 1e-5
    from slicer.formats.storage import save_subnet

    save_subnet(small, tmp_path / "s", tokenizer_from=folder)
    assert torch.equal(load_subnet(tmp_path / "s")(**batch).last_hidden_state, small(**batch).last_hidden_state)


@torch.no_grad()
def test_uniform_smollm2_slice_loads_in_stock_transformers(prepared_teacher, tmp_path):
    folder = prepared_teacher("smollm2")
    net = Supernet(load_base(folder))
    cfg = SubnetConfig.parse({"layers": 10, "heads": 6, "ffn": 768}, net.dims)
    small = net.extract(cfg)
    from slicer.formats.storage import save_subnet

    meta = save_subnet(small, tmp_path / "s", tokenizer_from=folder)
    assert meta["transformers_checkpoint"] == "transformers"
    batch = _batch(folder, "decoder", n=2, max_len=32)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "s" / "transformers").eval()
    real = batch["attention_mask"].bool()
    assert (stock(**batch).logits - small(**batch).logits)[real].abs().max().item() < 1e-4
