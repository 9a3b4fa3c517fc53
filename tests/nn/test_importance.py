"""Importance reordering: a function-preserving permutation whose order reflects the units' usefulness."""

from __future__ import annotations

import copy

import pytest
import torch

from slicer.errors import CheckpointError, ConfigError
from slicer.nn.factory import build_model
from slicer.nn.importance import METHODS, Reordering, compute_reordering
from slicer.spec.dims import ModelDims
from slicer.spec.subnet_config import SubnetConfig
from slicer.train.losses import causal_lm_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def teacher(dims: ModelDims, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(dims).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def batches(dims: ModelDims, n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, dims.vocab_size, (3, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -4:] = 0
        mask[2, -1:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def loss_for(dims: ModelDims, data: list[dict[str, torch.Tensor]]):
    """decoder: next-token loss; encoder: a fixed random projection of the mean-pooled output."""
    if dims.family == "decoder":
        return causal_lm_loss
    projection = torch.randn(dims.hidden, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def loss(out, _batch):
        return (out.last_hidden_state.mean(dim=1) @ projection).pow(2).sum()
    return loss


def run(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.last_hidden_state if out.logits is None else out.logits


def assert_permutation(t: torch.Tensor, n: int) -> None:
    assert t.dtype == torch.long and t.shape == (n,)
    assert torch.equal(torch.sort(t).values, torch.arange(n))


@pytest.mark.parametrize("hidden", [False, True], ids=["units", "units+hidden"])
@pytest.mark.parametrize("method", METHODS)
def test_reordering_preserves_the_function(tiny_dims, method, hidden):
    model = teacher(tiny_dims)
    original = copy.deepcopy(model)
    data = batches(tiny_dims)
    loss_fn = loss_for(tiny_dims, data) if method == "taylor" else None
    requires_grad = [p.requires_grad for p in model.parameters()]
    reordering = compute_reordering(model, data, method, loss_fn, hidden=hidden)
    assert [p.requires_grad for p in model.parameters()] == requires_grad  # scoring leaves the model as it was
    for k, v in model.state_dict().items():
        assert torch.equal(v, original.state_dict()[k]), f"scoring changed {k}"

    d = tiny_dims
    assert len(reordering.attn_units) == len(reordering.ffn) == d.num_layers
    for units, neurons in zip(reordering.attn_units, reordering.ffn):
        assert_permutation(units, d.num_kv_heads)
        assert_permutation(neurons, d.ffn)
    if hidden:
        assert_permutation(reordering.hidden, d.hidden)
    else:
        assert reordering.hidden is None
    identity = all(torch.equal(u, torch.arange(len(u))) for u in reordering.attn_units + reordering.ffn)
    assert not identity  # random weights are not already sorted

    reordering.apply(model)
    assert any(not torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    test_batch = batches(tiny_dims, n=1, seed=5)[0]
    expected, got = run(original, test_batch), run(model, test_batch)
    if hidden and d.family == "encoder":
        got = got[..., torch.argsort(reordering.hidden)]  # channel c of the original is channel argsort(c) now
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_prefix_slices_keep_the_top_ranked_units(decoder_dims, method):
    """After reordering, keeping the first k units keeps the units that ranked best."""
    model = teacher(decoder_dims)
    data = batches(decoder_dims)
    reordering = compute_reordering(model, data, method, loss_for(decoder_dims, data) if method == "taylor" else None)
    before_up = model.layers[2].ffn.up.weight.clone()
    before_k = model.layers[2].attn.k.weight.clone()
    reordering.apply(model)
    assert torch.equal(model.layers[2].ffn.up.weight[:10], before_up[reordering.ffn[2][:10]])
    hd = decoder_dims.head_dim
    best = reordering.attn_units[2][0].item()
    assert torch.equal(model.layers[2].attn.k.weight[:hd], before_k[best * hd : (best + 1) * hd])


@pytest.mark.parametrize("method", METHODS)
def test_a_dead_ffn_neuron_ranks_last(tiny_dims, method):
    model = teacher(tiny_dims)
    layer, neuron = 1, 37
    with torch.no_grad():
        model.layers[layer].ffn.down.weight[:, neuron] = 0.0
    data = batches(tiny_dims)
    reordering = compute_reordering(model, data, method, loss_for(tiny_dims, data) if method == "taylor" else None)
    assert reordering.ffn[layer][-1].item() == neuron


def test_a_useless_attention_unit_ranks_last_by_activation(decoder_dims):
    model = teacher(decoder_dims)
    unit_width = decoder_dims.group_size * decoder_dims.head_dim
    with torch.no_grad():
        model.layers[0].attn.o.weight[:, unit_width : 2 * unit_width] = 0.0  # key/value group 1 reaches nothing
    reordering = compute_reordering(model, batches(decoder_dims), "activation")
    assert reordering.attn_units[0][-1].item() == 1


def test_taylor_needs_a_loss(tiny_dims):
    with pytest.raises(ConfigError, match=r"taylor.*needs a loss"):
        compute_reordering(teacher(tiny_dims), batches(tiny_dims), "taylor")


def test_unknown_method_and_subnets_are_refused(tiny_dims):
    model = teacher(tiny_dims)
    with pytest.raises(ConfigError, match="'fisher' is not one of"):
        compute_reordering(model, batches(tiny_dims), "fisher")
    subnet = build_model(tiny_dims, SubnetConfig.uniform(tiny_dims, 2, tiny_dims.num_heads, 32))
    with pytest.raises(ConfigError, match="full teacher"):
        compute_reordering(subnet, batches(tiny_dims), "magnitude")


def test_without_batches_magnitude_is_used(tiny_dims):
    model = teacher(tiny_dims)
    a = compute_reordering(model, None, "activation")
    b = compute_reordering(model, [], "taylor")
    m = compute_reordering(model, None, "magnitude")
    for x in (a, b):
        assert all(torch.equal(u, v) for u, v in zip(x.attn_units + x.ffn, m.attn_units + m.ffn))


def test_reordering_tensors_round_trip(decoder_dims):
    model = teacher(decoder_dims)
    r = compute_reordering(model, batches(decoder_dims), "activation", hidden=True)
    back = Reordering.from_tensors(r.to_tensors(), decoder_dims)
    assert all(torch.equal(u, v) for u, v in zip(back.attn_units + back.ffn, r.attn_units + r.ffn))
    assert torch.equal(back.hidden, r.hidden)


@pytest.mark.parametrize("name, broken", [
    ("ffn.0", lambda t: torch.zeros_like(t)),  # a repeated neuron: would load silently and change the model
    ("attn_units.1", lambda t: t + 1),  # out of range
    ("ffn.2", lambda t: t[:-1]),  # too short
    ("hidden", lambda t: t.float()),  # not indices
    ("ffn.9", None),  # a layer the model does not have
])
def test_a_saved_reordering_that_is_not_a_permutation_is_refused(decoder_dims, name, broken):
    tensors = compute_reordering(teacher(decoder_dims), batches(decoder_dims), "activation", hidden=True).to_tensors()
    tensors[name] = broken(tensors[name]) if broken else torch.arange(decoder_dims.ffn)
    with pytest.raises(CheckpointError, match=name):
        Reordering.from_tensors(tensors, decoder_dims)


def test_causal_lm_loss_ignores_padding(decoder_dims):
    model = teacher(decoder_dims)
    b = batches(decoder_dims, n=1)[0]
    with torch.no_grad():
        out = model(**b)
    loss = causal_lm_loss(out, b)
    changed = b["input_ids"].clone()
    changed[1, -1] = (changed[1, -1] + 1) % decoder_dims.vocab_size  # a padded target
    assert torch.equal(causal_lm_loss(out, {**b, "input_ids": changed}), loss)
    changed[0, -1] = (changed[0, -1] + 1) % decoder_dims.vocab_size  # a real target
    assert not torch.equal(causal_lm_loss(out, {**b, "input_ids": changed}), loss)


def test_applying_to_a_model_wrapped_in_adapters_is_refused_or_harmless(tiny_dims):
    """``apply`` is for adapter-free models; on a supernet's model it must not silently permute only some tensors."""
    from slicer.nn.supernet import Supernet

    model = teacher(tiny_dims)
    b = batches(tiny_dims, n=1)[0]
    expected = run(model, b)
    reordering = compute_reordering(model, None, "magnitude", hidden=True)
    supernet = Supernet(model).double().eval()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    try:
        reordering.apply(supernet.model)
    except ConfigError:
        assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())
        return
    got = run(supernet, b)
    if tiny_dims.family == "encoder":
        got = got[..., torch.argsort(reordering.hidden)]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
