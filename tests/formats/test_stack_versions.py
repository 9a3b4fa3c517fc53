"""Adapter stack format versions: /2 stacks carry stage ranks, vector and head deltas; /1 stacks still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.models import randomize_adapters, randomize_deltas

from slicer.errors import CheckpointError
from slicer.formats.adapter_stack import STACK_FORMAT, STACK_META, load_adapter_stack, save_adapter_stack
from slicer.formats.storage import fingerprint, load_base, save_subnet
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.importance import compute_reordering
from slicer.nn.supernet import Supernet
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")
FULL = AdapterSettings(rank=4, stage_ranks=(4, 2, 6), vectors=True, head=True)


@pytest.fixture
def base_folder(encoder_dims, tmp_path) -> Path:
    torch.manual_seed(5)
    teacher = build_model(encoder_dims).eval()
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    save_subnet(teacher, tmp_path / "teacher")
    return tmp_path / "teacher" / "transformers"


def write_stack(base_folder: Path, out: Path, settings: AdapterSettings) -> tuple[Supernet, str]:
    base = load_base(base_folder)
    reordering = compute_reordering(base, method="magnitude", hidden=True)
    reordering.apply(base)
    base.add_classification_head(3)
    net = Supernet(base, settings).eval()
    randomize_adapters(net, 7)
    randomize_deltas(net, 8)
    net.set_stage(2)
    fp = fingerprint(base_folder)
    save_adapter_stack(net, out, fp, reordering)
    return net, fp


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def configs(dims):
    return [SubnetConfig.maximal(dims), SubnetConfig.uniform(dims, 2, 2, 16, 24),
            SubnetConfig.parse({"layers": [1, 3], "heads": [4, 2], "ffn": [5, 60]}, dims)]


def test_a_stack_with_every_new_part_round_trips(base_folder, tmp_path, encoder_batch):
    net, fp = write_stack(base_folder, tmp_path / "stack", FULL)
    meta = json.loads((tmp_path / "stack" / STACK_META).read_text())
    assert meta["format"] == STACK_FORMAT == "mlfs-adapters/2"
    assert meta["stage_ranks"] == [4, 2, 6] and meta["vector_deltas"] and meta["head_deltas"]
    loaded = load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)
    assert loaded.settings == net.settings and loaded.stage == 2
    for k, v in net.adapter_state().items():
        assert torch.equal(loaded.adapter_state()[k], v), k
    inputs = encoder_batch
    for cfg in configs(net.dims):
        assert torch.equal(logits(loaded.extract(cfg), inputs), logits(net.extract(cfg), inputs)), cfg.describe()


def test_a_version_1_stack_loads_and_computes_as_before(base_folder, tmp_path, encoder_batch):
    """What the code before issue 17 wrote: format /1, one rank, no delta fields, low-rank pairs and the head."""
    net, fp = write_stack(base_folder, tmp_path / "stack", AdapterSettings(rank=4))
    path = tmp_path / "stack" / STACK_META
    meta = json.loads(path.read_text())
    for key in ("stage_ranks", "vector_deltas", "head_deltas"):
        del meta[key]
    path.write_text(json.dumps({**meta, "format": "mlfs-adapters/1"}))
    loaded = load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)
    assert loaded.settings == AdapterSettings(rank=4).for_family("encoder") and not loaded.deltas
    inputs = encoder_batch
    for cfg in configs(net.dims):
        assert torch.equal(logits(loaded.extract(cfg), inputs), logits(net.extract(cfg), inputs)), cfg.describe()


def test_an_unknown_format_is_refused(base_folder, tmp_path):
    _, fp = write_stack(base_folder, tmp_path / "stack", FULL)
    path = tmp_path / "stack" / STACK_META
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": "mlfs-adapters/3"}))
    with pytest.raises(CheckpointError, match="format"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)


def test_a_stack_missing_its_vector_deltas_is_refused(base_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from slicer.errors import AdapterMismatchError

    _, fp = write_stack(base_folder, tmp_path / "stack", FULL)
    weights = tmp_path / "stack" / "adapters.safetensors"
    tensors = load_file(str(weights))
    del tensors["layers.1.ffn_norm.bias.delta.2"]
    save_file(tensors, str(weights))
    with pytest.raises(AdapterMismatchError, match=r"layers\.1\.ffn_norm\.bias\.delta\.2"):
        load_adapter_stack(load_base(base_folder), tmp_path / "stack", fp)
