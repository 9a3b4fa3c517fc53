"""The supernet's properties: extraction equals the elastic forward, merge commutes with slicing and is safe."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers.models import output, padded_batch, randomize_adapters
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from slicer.errors import ConfigError, MergeError
from slicer.nn.adapters import AdaptedLinear, AdapterSettings, LowRankStack
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.spec.dims import ModelDims
from slicer.spec.search_space import SearchSpace
from slicer.spec.shapes import parameter_shapes
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RANK = 4


def randomize_norms(model: nn.Module, seed: int) -> None:
    """Norm weights away from 1 and biases away from 0, so slicing them wrongly would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g).to(p.dtype))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))


def make(dims: ModelDims, dtype: torch.dtype = torch.float64, adapters: bool = True, seed: int = 0):
    """(teacher, supernet): the teacher is an untouched copy of the supernet's base."""
    torch.manual_seed(seed)
    base = build_model(dims).to(dtype).eval()
    randomize_norms(base, seed + 1)
    teacher = copy.deepcopy(base)
    supernet = Supernet(base, AdapterSettings(rank=RANK)).to(dtype).eval()
    if adapters:
        randomize_adapters(supernet, seed + 2)
    return teacher, supernet


@st.composite
def configs(draw, dims: ModelDims) -> SubnetConfig:
    """Any valid config: explicit layer subsets, per-layer heads (whole groups) and FFN widths, any hidden size."""
    layers = sorted(draw(st.sets(st.integers(0, dims.num_layers - 1), min_size=1)))
    g = dims.group_size
    heads = tuple(draw(st.integers(1, dims.num_heads // g)) * g for _ in layers)
    ffn = tuple(draw(st.integers(1, dims.ffn)) for _ in layers)
    hidden = draw(st.integers(2, dims.hidden))
    return SubnetConfig(tuple(layers), heads, ffn, hidden).validate(dims)


_CACHE: dict[tuple[ModelDims, torch.dtype], tuple[nn.Module, Supernet]] = {}


def shared(dims: ModelDims, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Supernet]:
    """One (teacher, supernet with non-zero adapters) per family and dtype, for the read-only properties."""
    if (dims, dtype) not in _CACHE:
        _CACHE[dims, dtype] = make(dims, dtype)
    return _CACHE[dims, dtype]


# ----- (a) extract == elastic forward -----------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_extract_equals_the_supernet_at_that_config(data, tiny_dims, tiny_batch):
    _, supernet = shared(tiny_dims)
    cfg = data.draw(configs(tiny_dims))
    inputs = tiny_batch
    supernet.set_active(cfg)
    elastic = output(supernet, inputs)
    subnet = supernet.extract(cfg)
    static = output(subnet, inputs)
    assert static.dtype == torch.float64 and static.shape[-1] == (cfg.hidden if tiny_dims.family == "encoder" else tiny_dims.vocab_size)
    torch.testing.assert_close(static, elastic, rtol=1e-10, atol=1e-10)


@PROPERTY
@given(data=st.data())
def test_extract_equals_the_supernet_in_float32(data, tiny_dims):
    _, supernet = shared(tiny_dims, torch.float32)
    cfg = data.draw(configs(tiny_dims))
    inputs = padded_batch(tiny_dims, seed=1)  # another batch than tiny_batch
    supernet.set_active(cfg)
    elastic = output(supernet, inputs)
    static = output(supernet.extract(cfg), inputs)
    assert static.dtype == torch.float32
    scale = elastic.abs().max().item()
    torch.testing.assert_close(static, elastic, rtol=1e-5, atol=1e-5 * scale)


def test_subnets_differ_from_each_other(tiny_dims, tiny_batch):
    """Guards the properties above against a forward that ignores the active config."""
    _, supernet = shared(tiny_dims)
    inputs = tiny_batch
    space = SearchSpace.default(tiny_dims)
    outs = {}
    for cfg in space.enumerate(tiny_dims):
        supernet.set_active(cfg)
        outs[cfg] = output(supernet, inputs)
    small, large = space.smallest(tiny_dims), space.largest(tiny_dims)
    assert not torch.allclose(outs[small], outs[large], atol=1e-3)
    supernet.set_max()


@pytest.mark.parametrize("alpha", [16.0, 1.0])
def test_extract_equals_the_supernet_with_scaled_adapters(tiny_dims, alpha, tiny_batch):
    torch.manual_seed(0)
    base = build_model(tiny_dims).double().eval()
    supernet = Supernet(base, AdapterSettings(rank=RANK, alpha=alpha)).double().eval()
    randomize_adapters(supernet, 3)
    assert all(s.scale == alpha / RANK for s in supernet.adapter_stacks().values())
    cfg = SubnetConfig.parse({"layers": [0, 3], "ffn": [20, 50], "hidden": 30}, tiny_dims)
    inputs = tiny_batch
    supernet.set_active(cfg)
    torch.testing.assert_close(output(supernet.extract(cfg), inputs), output(supernet, inputs), rtol=1e-10, atol=1e-10)
    layer = supernet.adapted_layers()["layers.0.attn.q"]
    by_hand = layer.base.weight + sum(a @ b for a, b in zip(layer.adapter.A, layer.adapter.B)) * alpha / RANK
    torch.testing.assert_close(layer.effective_weight(8, 30), by_hand[:8, :30], rtol=1e-12, atol=1e-12)


# ----- (b) the maximal subnet is the teacher -----------------------------------------------------------------------
def test_extract_max_with_zero_adapters_is_the_teacher_exactly(tiny_dims, tiny_batch):
    teacher, supernet = make(tiny_dims, adapters=False)
    subnet = supernet.extract(SubnetConfig.maximal(tiny_dims))
    t_state, s_state = teacher.state_dict(), subnet.state_dict()
    assert s_state.keys() == t_state.keys()
    for k in t_state:
        assert torch.equal(s_state[k], t_state[k]), k
    inputs = tiny_batch
    assert torch.equal(output(subnet, inputs), output(teacher, inputs))
    assert torch.equal(output(supernet, inputs), output(teacher, inputs))


def test_extract_max_with_adapters_is_the_merged_teacher(tiny_dims, tiny_batch):
    teacher, supernet = make(tiny_dims)
    inputs = tiny_batch
    subnet = supernet.extract(SubnetConfig.maximal(tiny_dims))
    assert not torch.allclose(output(subnet, inputs), output(teacher, inputs), atol=1e-4)  # the adapters matter
    supernet.merge()
    merged = supernet.base_state()
    for k, v in subnet.state_dict().items():
        assert torch.equal(v, merged[k]), k
    torch.testing.assert_close(output(subnet, inputs), output(supernet, inputs), rtol=0, atol=1e-12)


def test_extract_without_merge_is_the_naive_cut(tiny_dims):
    _, supernet = make(tiny_dims)
    cfg = SubnetConfig.parse({"layers": 2, "heads": 3, "ffn": 32}, tiny_dims)
    naive = supernet.extract(cfg, merge=False).state_dict()
    with torch.no_grad():
        for stack in supernet.adapter_stacks().values():
            for a in stack.A:
                a.zero_()
    for k, v in supernet.extract(cfg).state_dict().items():
        assert torch.equal(v, naive[k]), k


# ----- (c) merge-then-slice == slice-then-merge -------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_sliced_merge_equals_slice_of_full_merge(data, tiny_dims):
    _, supernet = shared(tiny_dims)
    layers = supernet.adapted_layers()
    name = data.draw(st.sampled_from(sorted(layers)))
    layer = layers[name]
    o = data.draw(st.integers(1, layer.base.out_features))
    i = data.draw(st.integers(1, layer.base.in_features))
    stack = layer.adapter
    full = layer.base.weight + sum(a @ b for a, b in zip(stack.A, stack.B)) * stack.scale
    by_hand = full[:o, :i]
    got = layer.effective_weight(o, i)
    assert got.shape == (o, i)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, layer.base.weight[:o, :i], atol=1e-6)  # non-zero adapters


def test_every_target_is_adapted(tiny_dims):
    _, supernet = shared(tiny_dims)
    names = set(supernet.adapted_layers())
    targets = {"encoder": ["attn.q", "attn.k", "attn.v", "ffn.up"], "decoder": ["attn.q", "attn.k", "attn.v", "ffn.gate", "ffn.up"]}
    assert names == {f"layers.{i}.{t}" for i in range(tiny_dims.num_layers) for t in targets[tiny_dims.family]}


# ----- (d) merge is idempotent and refuses non-finite results -------------------------------------------------------
def snapshot(supernet: Supernet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in supernet.base_state().items()}


def test_merge_preserves_the_function_and_is_idempotent(tiny_dims, tiny_batch):
    _, supernet = make(tiny_dims)
    inputs = tiny_batch
    before = output(supernet, inputs)
    weights_before = snapshot(supernet)
    supernet.merge()
    once, weights_once = output(supernet, inputs), snapshot(supernet)
    assert all(m.merged for m in supernet.adapted_layers().values())
    assert any(not torch.equal(weights_once[k], weights_before[k]) for k in weights_before)
    torch.testing.assert_close(once, before, rtol=1e-10, atol=1e-10)
    supernet.merge()
    twice, weights_twice = output(supernet, inputs), snapshot(supernet)
    for k in weights_once:
        assert torch.equal(weights_twice[k], weights_once[k]), k
    assert torch.equal(twice, once)
    # the merged supernet still slices like the unmerged one
    cfg = SubnetConfig.uniform(tiny_dims, 2, tiny_dims.group_size, 16, 20)
    _, fresh = make(tiny_dims)
    fresh.set_active(cfg)
    supernet.set_active(cfg)
    torch.testing.assert_close(output(supernet, inputs), output(fresh, inputs), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(output(supernet.extract(cfg), inputs), output(fresh.extract(cfg), inputs), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("where", ["first", "last"])
def test_nan_in_a_stack_makes_merge_and_extract_raise_and_changes_nothing(tiny_dims, where):
    _, supernet = make(tiny_dims)
    layers = supernet.adapted_layers()
    name = sorted(layers, key=list(layers).index)[0 if where == "first" else -1]
    with torch.no_grad():
        layers[name].adapter.A[1][0, 0] = float("nan")
    before = snapshot(supernet)
    with pytest.raises(MergeError, match="non-finite"):
        supernet.extract(SubnetConfig.maximal(tiny_dims))
    with pytest.raises(MergeError, match="non-finite"):
        supernet.merge()
    after = snapshot(supernet)
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} changed by a failed merge"
    assert not any(m.merged for m in supernet.adapted_layers().values())


def test_nan_outside_the_slice_does_not_block_a_smaller_subnet(decoder_dims):
    _, supernet = make(decoder_dims)
    layer = supernet.adapted_layers()["layers.3.ffn.up"]
    with torch.no_grad():
        layer.adapter.A[0][-1, 0] = float("inf")  # last FFN neuron of layer 3
    cfg = SubnetConfig.parse({"ffn": 32}, decoder_dims)
    supernet.extract(cfg)  # fine: the bad row is sliced away
    with pytest.raises(MergeError):
        supernet.extract(SubnetConfig.maximal(decoder_dims))


# ----- (e) extracted models are plain and sized as counted -----------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_extracted_model_is_plain_and_sized_as_counted(data, tiny_dims):
    _, supernet = shared(tiny_dims)
    cfg = data.draw(configs(tiny_dims))
    subnet = supernet.extract(cfg)
    assert subnet.cfg == cfg and not subnet.training
    assert subnet.num_parameters() == cfg.param_count(tiny_dims).total
    assert dict(subnet.state_dict()).keys() == parameter_shapes(tiny_dims, cfg).keys()
    subnet.check_shapes()
    assert not any(isinstance(m, AdaptedLinear | LowRankStack) for m in subnet.modules())
    assert not any("adapter" in name for name, _ in subnet.named_parameters())


def test_extracted_weights_are_copies(tiny_dims, tiny_batch):
    _, supernet = make(tiny_dims)
    inputs = tiny_batch
    reference = output(supernet, inputs)
    subnet = supernet.extract(SubnetConfig.maximal(tiny_dims))
    with torch.no_grad():
        for p in subnet.parameters():
            p.mul_(0.5)
    assert torch.equal(output(supernet, inputs), reference)


def test_extracted_subnet_is_not_elastic(tiny_dims):
    _, supernet = shared(tiny_dims)
    cfg = SubnetConfig.uniform(tiny_dims, 2, tiny_dims.num_heads, 32)
    subnet = supernet.extract(cfg)
    with pytest.raises(ConfigError, match="only a model built at the maximal config is elastic"):
        subnet.set_active(cfg)
    with pytest.raises(ConfigError, match="maximal config"):
        Supernet(subnet)


# ----- (f) set_active then set_max returns to the teacher -------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_set_max_after_set_active_returns_to_the_maxnet(data, tiny_dims):
    _, supernet = shared(tiny_dims)
    inputs = padded_batch(tiny_dims, seed=2)  # another batch than tiny_batch
    supernet.set_max()
    maxnet = output(supernet, inputs)
    cfg = data.draw(configs(tiny_dims))
    supernet.set_active(cfg)
    assert supernet.active == cfg
    sliced = output(supernet, inputs)
    if cfg.hidden == tiny_dims.hidden and cfg != SubnetConfig.maximal(tiny_dims):
        assert not torch.allclose(sliced, maxnet, atol=1e-8)
    supernet.set_max()
    assert supernet.active == SubnetConfig.maximal(tiny_dims)
    assert torch.equal(output(supernet, inputs), maxnet)


def test_set_max_returns_to_the_teacher_with_zero_adapters(tiny_dims, tiny_batch):
    teacher, supernet = make(tiny_dims, adapters=False)
    inputs = tiny_batch
    supernet.set_active(SubnetConfig.uniform(tiny_dims, 2, tiny_dims.group_size, 8, 16))
    supernet.set_max()
    assert torch.equal(output(supernet, inputs), output(teacher, inputs))


def test_sample_uses_the_space_and_does_not_activate(tiny_dims):
    _, supernet = make(tiny_dims)
    supernet.set_max()
    rng = random.Random(0)
    sampled = [supernet.sample(rng, vary_depth=False) for _ in range(10)]
    assert all(len(c.layers) == tiny_dims.num_layers for c in sampled)
    assert supernet.active == SubnetConfig.maximal(tiny_dims)


# ----- adapters and stages ------------------------------------------------------------------------------------------
def test_only_the_current_stage_is_trainable(tiny_dims, tiny_batch):
    _, supernet = make(tiny_dims)
    inputs = tiny_batch
    base = [p for name, p in supernet.named_parameters() if ".adapter." not in name]
    assert base and not any(p.requires_grad for p in base)
    for stage in range(3):
        supernet.set_stage(stage)
        assert supernet.stage == stage
        for stack in supernet.adapter_stacks().values():
            assert [a.requires_grad for a in stack.A] == [s == stage for s in range(3)]
            assert [b.requires_grad for b in stack.B] == [s == stage for s in range(3)]
        supernet.zero_grad(set_to_none=True)
        out = supernet(**inputs)
        (out.last_hidden_state if out.logits is None else out.logits).pow(2).mean().backward()
        for name, p in supernet.named_parameters():
            is_current = f".A.{stage}" in name or f".B.{stage}" in name
            assert (p.grad is not None) == is_current, name
            if is_current and ".A." in name:
                assert p.grad.abs().sum() > 0, name


def test_three_stages_hold_6rd_numbers_per_square_matrix(encoder_dims):
    assert encoder_dims.num_heads * encoder_dims.head_dim == encoder_dims.hidden  # q is d x d
    rank, d = 8, encoder_dims.hidden
    supernet = Supernet(build_model(encoder_dims), AdapterSettings(rank=rank))
    for stage in range(3):
        supernet.set_stage(stage)
    stack = supernet.adapter_stacks()["layers.0.attn.q"]
    assert len(stack.A) == len(stack.B) == 3
    numbers = sum(p.numel() for p in stack.parameters())
    assert numbers == 6 * rank * d == sum(v.numel() for k, v in supernet.adapter_state().items() if k.startswith("layers.0.attn.q."))
    # the gradient-scaling count covers every adapter number of the maxnet
    assert supernet.active_adapter_numbers() == sum(p.numel() for p in supernet.adapter_state().values())
    assert supernet.active_adapter_numbers(stages=(2,)) * 3 == supernet.active_adapter_numbers()


def test_new_stage_adapters_start_as_a_no_op(tiny_dims):
    _, supernet = make(tiny_dims, adapters=False)
    for stack in supernet.adapter_stacks().values():
        assert all(torch.count_nonzero(a) == 0 for a in stack.A)
        assert all(torch.count_nonzero(b) > 0 for b in stack.B)


@pytest.mark.parametrize("stage", [-1, 3, 7])
def test_invalid_stage(tiny_dims, stage):
    _, supernet = shared(tiny_dims)
    with pytest.raises(ConfigError, match=r"stage: .* allowed 0..2"):
        supernet.set_stage(stage)


@pytest.mark.parametrize(("kwargs", "expected"), [({"rank": 0}, "rank"), ({"rank": True}, "rank"),
                                                  ({"stages": 4}, "stages"), ({"targets": ("qkv",)}, "targets")])
def test_invalid_adapter_settings(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        AdapterSettings(**kwargs)


def test_adapters_follow_the_base_dtype(tiny_dims, tiny_batch):
    """A supernet over a float64 (or bf16, or GPU) base must create its adapters to match, or the forward fails."""
    base = build_model(tiny_dims).double()
    supernet = Supernet(base, AdapterSettings(rank=RANK))
    assert {p.dtype for p in supernet.parameters()} == {torch.float64}
    assert output(supernet, tiny_batch).dtype == torch.float64


def test_adapter_shapes_without_building_match_the_supernet(tiny_dims):
    from slicer.nn.supernet import adapter_shapes

    settings = AdapterSettings(rank=3)
    net = Supernet(build_model(tiny_dims), settings)
    assert adapter_shapes(tiny_dims, settings) == {k: tuple(v.shape) for k, v in net.adapter_state().items()}


def test_all_finite_is_exact_whatever_the_sum():
    """The fast check reads the sum: a NaN, one infinity or opposite ones all fail; finite values whose float32 sum
    overflows pass (the exact check decides)."""
    from slicer.nn.adapters import all_finite

    big = torch.full((4,), 3e38)
    assert all_finite(torch.randn(100)) and all_finite(big) and not torch.isfinite(big.sum())
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(100)
        t[37] = bad
        assert not all_finite(t)
    t = torch.randn(100)
    t[1], t[2] = float("inf"), -float("inf")
    assert not all_finite(t)
