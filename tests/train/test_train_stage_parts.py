"""The trainer with issue 17's settings: each stage trains only its own parts (vector and head deltas too), the
frozen stage-0 teacher, small-biased sampling, and per-stage learning rates and lengths."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import make_data, make_net

from slicer.errors import ConfigError
from slicer.nn.adapters import recommended
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.spec.search_space import SearchSpace
from slicer.train.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def full_net(dims, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    model = build_model(dims)
    model.add_classification_head(2)
    torch.manual_seed(seed + 1)
    g = dims.group_size
    space = SearchSpace((2, 3, 4), (g * (dims.num_heads // g // 2), dims.num_heads), (32, 64), (dims.hidden,))
    return Supernet(model, recommended(rank=2), space)


def test_each_stage_trains_only_its_own_parts(encoder_dims, tmp_path):
    net, data = full_net(encoder_dims), make_data(encoder_dims)
    state = lambda: {k: v.clone() for k, v in {**net.adapter_state(), **net.head_state()}.items()}  # noqa: E731
    before = state()
    for stage in (0, 1, 2):
        settings = TrainSettings(batch_size=8, max_steps=2, subnets=3, stages=(stage,), lr=1e-2)
        Trainer(net, data, settings, tmp_path / str(stage)).run()
        after = state()
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        own = {k for k in after if k.endswith(f".{stage}")} | ({"head.weight", "head.bias"} if stage == 0 else set())
        assert changed <= own, f"stage {stage} changed {sorted(changed - own)[:3]}"
        kinds = {"low-rank": ".A.", "vector": "norm.weight.delta", "bias": "bias.delta", "head": "head."}
        assert all(any(part in k for k in changed) for part in kinds.values()), (stage, sorted(changed)[:5])
        before = after


def test_the_frozen_stage0_teacher_is_not_the_moving_maxnet(encoder_dims, tmp_path):
    data = make_data(encoder_dims)
    results = {}
    for teacher in ("maxnet", "stage0"):
        net = full_net(encoder_dims)
        Trainer(net, data, TrainSettings(batch_size=8, max_steps=3, subnets=3, lr=1e-2, teacher=teacher), tmp_path / teacher).run()
        results[teacher] = net.adapter_state()
    stage0 = [k for k in results["maxnet"] if k.endswith(".0")]
    stage2 = [k for k in results["maxnet"] if k.endswith(".A.2")]
    assert all(torch.equal(results["maxnet"][k], results["stage0"][k]) for k in stage0)  # stage 0 has no teacher
    assert any(not torch.equal(results["maxnet"][k], results["stage0"][k]) for k in stage2)


def test_small_bias_draws_sampled_subnets_from_the_smaller_half(encoder_dims, tmp_path):
    net = make_net(encoder_dims)
    trainer = Trainer(net, make_data(encoder_dims), TrainSettings(batch_size=8, subnets=6, small_bias=1.0), tmp_path)
    for stage in (1, 2):
        small = {c.key for c in trainer.small_configs(stage)}
        every = [c for c in net.space.enumerate(encoder_dims) if stage == 2 or len(c.layers) == encoder_dims.num_layers]
        assert len(small) == len(every) // 2
        cutoff = max(c.param_count(encoder_dims).non_embedding for c in every if c.key in small)
        assert all(c.param_count(encoder_dims).non_embedding >= cutoff for c in every if c.key not in small)
        for step in range(20):
            assert all(c.key in small for c in trainer.stage_configs(stage, step)[2:])
    uniform = Trainer(net, make_data(encoder_dims), TrainSettings(batch_size=8, subnets=6, small_bias=0.0), tmp_path / "u")
    seen = {c.key for step in range(40) for c in uniform.stage_configs(2, step)[2:]}
    assert seen - {c.key for c in uniform.small_configs(2)}  # uniform sampling reaches the larger half too


def test_stage_lr_and_stage_epochs_shape_each_stage(encoder_dims, tmp_path):
    settings = TrainSettings(batch_size=8, subnets=3, stage_lr=(1e-3, 2e-3, 4e-3), stage_epochs=(0.5, 0.25, 1.0), warmup=0.0)
    Trainer(make_net(encoder_dims), make_data(encoder_dims, n=48), settings, tmp_path).run()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_stage = {s: [r for r in rows if r["stage"] == s] for s in (0, 1, 2)}
    assert [len(per_stage[s]) for s in (0, 1, 2)] == [3, 2, 6]  # 6 batches of 8 per epoch
    assert [per_stage[s][0]["lr"] for s in (0, 1, 2)] == [1e-3, 2e-3, 4e-3]


def test_bad_new_settings_are_named():
    with pytest.raises(ConfigError, match="teacher"):
        TrainSettings(teacher="oracle")
    with pytest.raises(ConfigError, match="small_bias"):
        TrainSettings(small_bias=1.5)
    with pytest.raises(ConfigError, match="stage_lr"):
        TrainSettings(stage_lr=(1e-3, 1e-3))
    with pytest.raises(ConfigError, match="stage_epochs"):
        TrainSettings(stage_epochs=(1.0, 0.0, 1.0))
