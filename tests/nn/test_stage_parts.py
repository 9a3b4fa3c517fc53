"""Stage-wise parts beyond low-rank deltas (issue 17): vector deltas (norms, biases), head deltas, a rank per stage.

Same exactness bar as the low-rank adapters: a subnet extracted with every part merged equals the supernet
computing that subnet; merging keeps the function and is idempotent; a stage trains only its own parts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import output, randomize_adapters, randomize_deltas

from slicer.errors import ConfigError, MergeError
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet, adapter_shapes, vector_names
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")
FULL = AdapterSettings(rank=4, stage_ranks=(4, 2, 6), vectors=True, head=True)


def make(dims, settings: AdapterSettings = FULL, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    base = build_model(dims).double().eval()
    if dims.family == "encoder":
        base.add_classification_head(3)
        base.double()
    net = Supernet(base, settings).double().eval()
    randomize_adapters(net, seed + 1)
    randomize_deltas(net, seed + 2)
    return net


def configs(dims):
    g = dims.group_size
    return [SubnetConfig.maximal(dims), SubnetConfig.uniform(dims, 2, g, 16, 20),
            SubnetConfig.parse({"layers": [1, 3], "heads": [2 * g, g], "ffn": [5, 60]}, dims)]


def test_parts_exist_with_the_shapes_adapter_shapes_lists(tiny_dims):
    net = make(tiny_dims)
    state = {k: tuple(v.shape) for k, v in net.adapter_state().items()}
    assert state == adapter_shapes(net.dims, FULL)
    names = vector_names(tiny_dims)
    assert names and all(f"{n}.delta.{s}" in state for n in names for s in range(3))
    assert state["layers.0.attn.q.A.2"][1] == 6 and state["layers.0.attn.q.B.1"][0] == 2  # rank per stage
    if tiny_dims.family == "encoder":
        assert "layers.0.attn_norm.bias.delta.0" in state and "layers.0.ffn.down.bias.delta.1" in state
        assert {"head.weight.delta.1", "head.bias.delta.2"} <= set(state) and "head.weight.delta.0" not in state
    # the base's own tensors keep their plain names, without deltas
    assert set(net.base_state()) == set(build_model(net.dims).state_dict())


def test_deltas_change_the_function_and_extract_equals_the_supernet(tiny_dims, tiny_batch):
    net = make(tiny_dims)
    plain = make(tiny_dims, AdapterSettings(rank=4, stage_ranks=(4, 2, 6)))  # same low-rank parts, no deltas
    inputs = tiny_batch
    assert not torch.allclose(output(net, inputs), output(plain, inputs), atol=1e-4)
    for cfg in configs(net.dims):
        net.set_active(cfg)
        expected = output(net, inputs)
        torch.testing.assert_close(output(net.extract(cfg), inputs), expected, rtol=0, atol=1e-10)
        if tiny_dims.family == "encoder":
            with torch.no_grad():
                logits = net(**inputs).logits
            torch.testing.assert_close(net.extract(cfg)(**inputs).logits, logits, rtol=0, atol=1e-10)
    net.set_max()


def test_extract_merges_vector_and_head_deltas_into_plain_tensors(tiny_dims):
    net = make(tiny_dims)
    cfg = configs(net.dims)[1]
    merged, naive = net.extract(cfg).state_dict(), net.extract(cfg, merge=False).state_dict()
    name = "layers.0.attn_norm.weight"
    source = f"layers.{cfg.layers[0]}.attn_norm.weight"
    base = net._base_tensor(*net._owner(source))
    expected = base + sum(net.deltas[source].deltas.values())
    torch.testing.assert_close(merged[name], expected[: cfg.hidden], rtol=0, atol=1e-12)
    assert torch.equal(naive[name], base[: cfg.hidden])  # merge=False: the stored base alone


def test_merge_keeps_the_function_and_is_idempotent(tiny_dims, tiny_batch):
    net = make(tiny_dims)
    inputs = tiny_batch
    before = output(net, inputs)
    reference = copy.deepcopy(net)
    net.merge()
    assert all(d.merged for d in net.deltas.values())
    once = {k: v.clone() for k, v in net.base_state().items()}
    torch.testing.assert_close(output(net, inputs), before, rtol=1e-10, atol=1e-10)
    net.merge()
    for k, v in net.base_state().items():
        assert torch.equal(v, once[k]), k
    for cfg in configs(net.dims)[1:]:
        net.set_active(cfg)
        reference.set_active(cfg)
        torch.testing.assert_close(output(net, inputs), output(reference, inputs), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(output(net.extract(cfg), inputs), output(reference.extract(cfg), inputs), rtol=1e-10, atol=1e-10)


def test_a_non_finite_delta_blocks_merge_and_changes_nothing(encoder_dims):
    net = make(encoder_dims)
    with torch.no_grad():
        net.deltas["layers.1.ffn_norm.bias"].deltas["2"][0] = float("nan")
    before = {k: v.clone() for k, v in net.base_state().items()}
    with pytest.raises(MergeError, match="non-finite"):
        net.merge()
    with pytest.raises(MergeError, match="non-finite"):
        net.extract(SubnetConfig.maximal(net.dims))
    assert all(torch.equal(v, before[k]) for k, v in net.base_state().items())
    assert not any(m.merged for m in net.adapted_layers().values())


def test_a_stage_trains_only_its_own_parts(encoder_dims):
    net = make(encoder_dims)
    for stage in range(3):
        net.set_stage(stage)
        trainable = {k for k, p in net.named_parameters() if p.requires_grad}
        state = net.adapter_state()
        mine = {k for k in state if k.endswith(f".{stage}")}
        # adapter_state holds views of the parameters (state_dict): compare storage, not objects
        assert {p.data_ptr() for p in net.parameters() if p.requires_grad} == {state[k].data_ptr() for k in mine}, (stage, trainable)


def test_only_stages_is_the_supernet_with_later_parts_zeroed(tiny_dims, tiny_batch):
    net = make(tiny_dims)
    inputs = tiny_batch
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        for k, v in zeroed.adapter_state().items():
            if k.endswith((".1", ".2")) and (".A." in k or ".delta." in k):
                v.zero_()
    with net.only_stages(0):
        torch.testing.assert_close(output(net, inputs), output(zeroed, inputs), rtol=0, atol=1e-12)
    assert not torch.allclose(output(net, inputs), output(zeroed, inputs), atol=1e-6)  # restored afterwards


def test_stage_ranks_are_checked():
    with pytest.raises(ConfigError, match="stage_ranks"):
        AdapterSettings(stage_ranks=(8, 8))
    with pytest.raises(ConfigError, match="stage_ranks"):
        AdapterSettings(stage_ranks=(8, 0, 8))
    assert AdapterSettings(rank=8).ranks == (8, 8, 8)
    assert AdapterSettings(rank=8, alpha=16.0, stage_ranks=(8, 8, 32)).scales == (2.0, 2.0, 0.5)
