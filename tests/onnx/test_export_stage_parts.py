"""Export needs nothing from the new stage-wise parts: extraction merges them into plain weights, and the exported
graph of such a subnet agrees with the supernet computing it (issue 17), for both families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicer.nn.adapters import recommended
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.onnx import export
from slicer.spec.subnet_config import SubnetConfig
from slicer.train.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def trained(dims, task: str, tmp_path) -> Supernet:
    """A tiny supernet with every new part, trained a few steps per stage (so every stage's parts are non-zero)."""
    from slicer.data.batching import Examples
    from slicer.spec.search_space import SearchSpace

    torch.manual_seed(0)
    model = build_model(dims)
    if task == "classification":
        model.add_classification_head(3)
    g = dims.group_size
    space = SearchSpace((2, dims.num_layers), (g, dims.num_heads), (16, dims.ffn), (dims.hidden,))
    net = Supernet(model, recommended(rank=2), space)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, dims.vocab_size, (24, 9), generator=gen).tolist()
    data = Examples(ids, [i % 3 for i in range(24)] if task == "classification" else None, dims.family)
    Trainer(net, data, TrainSettings(task=task, batch_size=8, max_steps=2, subnets=3, lr=5e-2), tmp_path / "run").run()
    for name, deltas in net.deltas.items():
        for s, d in deltas.deltas.items():
            assert d.abs().sum() > 0, f"{name} delta {s} was not trained"
    return net.eval()


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_a_subnet_with_every_new_part_exports_and_matches_the_supernet(family, encoder_dims, decoder_dims, tmp_path):
    dims = encoder_dims if family == "encoder" else decoder_dims
    task = "classification" if family == "encoder" else "causal-lm"
    net = trained(dims, task, tmp_path)
    cfg = SubnetConfig.parse({"layers": 2, "heads": dims.group_size, "ffn": 16}, net.dims)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, dims.vocab_size, (2, 7), generator=g)
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "encoder":
        feed["attention_mask"][1, 4:] = 0
        feed["token_type_ids"] = torch.zeros_like(ids)
    subnet = net.extract(cfg)
    assert all(".delta." not in k and "parametrizations" not in k for k in subnet.state_dict())  # plain weights
    net.set_active(cfg)
    with torch.no_grad():
        want = net(**feed).logits
    net.set_max()
    with torch.no_grad():
        torch.testing.assert_close(subnet(**feed).logits, want, rtol=1e-5, atol=1e-5)
    manifest = export.build_artifact(subnet, tmp_path / "art", [feed])  # refuses a graph that differs from PyTorch
    assert manifest["config_key"] == cfg.key
    sess = export.session(tmp_path / "art" / "model.onnx")
    names = [i.name for i in sess.get_inputs()]
    if family == "encoder":
        got = sess.run(None, {k: v.numpy() for k, v in feed.items() if k in names})
        assert np.abs(got[1] - want.numpy()).max() < 1e-4
