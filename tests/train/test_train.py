"""The MLFS trainer on tiny models: stages, sampling, exact resume, data parallelism, and that it learns."""

from __future__ import annotations

import gc
import json
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from slicer.data.batching import Examples
from slicer.errors import CheckpointError, ConfigError
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.spec.search_space import SearchSpace
from slicer.train.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def make_net(dims, task: str = "classification", seed: int = 0, adapter_seed: int = 1) -> Supernet:
    torch.manual_seed(seed)
    model = build_model(dims)
    if task == "classification":
        model.add_classification_head(2)
    torch.manual_seed(adapter_seed)
    g = dims.group_size
    space = SearchSpace((2, 3, 4), (g * (dims.num_heads // g // 2), dims.num_heads), (32, 64), (dims.hidden,))
    return Supernet(model, AdapterSettings(rank=4), space)


def make_data(dims, n: int = 48, task: str = "classification", equal_length: bool = False, seed: int = 0) -> Examples:
    """Label 0 sequences use low token ids, label 1 high ones: learnable through the pooled embedding."""
    if task == "causal-lm":
        return Examples([[1 + (i + k) % 10 for i in range(12)] for k in range(n)], None, dims.family)
    rng = random.Random(seed)
    ids, labels = [], []
    middle = dims.vocab_size // 2
    for _ in range(n):
        label = rng.randint(0, 1)
        low, high = (2, middle) if label == 0 else (middle, dims.vocab_size - 1)
        length = 10 if equal_length else rng.randint(4, 12)
        ids.append([rng.randint(low, high) for _ in range(length)])
        labels.append(label)
    return Examples(ids, labels, dims.family)


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


SETTINGS = TrainSettings(batch_size=8, max_steps=4, checkpoint_every=2, subnets=3)


def test_stages_sample_as_the_paper_says(encoder_dims, tmp_path):
    net = make_net(encoder_dims)
    Trainer(net, make_data(encoder_dims), SETTINGS, tmp_path).run()
    log = rows(tmp_path)
    assert [(r["stage"], r["step"]) for r in log] == [(s, k) for s in (0, 1, 2) for k in range(4)]
    full = SearchSpace.largest(net.space, encoder_dims).describe()
    smallest = net.space.smallest(encoder_dims).describe()
    for r in log:
        assert r["configs"][0] == full  # the maxnet first, always
        if r["stage"] == 0:
            assert len(r["configs"]) == 1 and r["loss_min"] is None
        else:
            assert len(r["configs"]) == 3 and r["loss_min"] is not None
        if r["stage"] == 1:  # widths only: every subnet keeps all layers, the second is the narrowest
            assert all(c.startswith("L4[") for c in r["configs"])
            assert r["configs"][1].startswith("L4[") and " H2 F32 " in r["configs"][1]
        if r["stage"] == 2:  # widths and depths: the second is the smallest subnet (sandwich rule)
            assert r["configs"][1] == smallest


def test_each_stage_trains_only_its_own_adapters(encoder_dims, tmp_path):
    net = make_net(encoder_dims)
    data = make_data(encoder_dims)
    snapshots = []
    for stage in (0, 1, 2):
        settings = TrainSettings(batch_size=8, max_steps=2, subnets=3, stages=(stage,), lr=1e-2)
        Trainer(net, data, settings, tmp_path / str(stage)).run()
        snapshots.append({k: v.clone() for k, v in {**net.adapter_state(), **net.head_state()}.items()})
    before = {k: v.clone() for k, v in {**make_net(encoder_dims).adapter_state(), **make_net(encoder_dims).head_state()}.items()}
    for stage, snap in enumerate(snapshots):
        prev = before if stage == 0 else snapshots[stage - 1]
        changed = {k for k in snap if not torch.equal(snap[k], prev[k])}
        own = {k for k in snap if k.endswith(f".A.{stage}") or k.endswith(f".B.{stage}")}
        if stage == 0:
            own |= {"head.weight", "head.bias"}
        assert changed and changed <= own, f"stage {stage} changed {sorted(changed - own)[:3]}"


def test_resume_repeats_the_uninterrupted_run(encoder_dims, tmp_path):
    data = make_data(encoder_dims)
    Trainer(make_net(encoder_dims), data, SETTINGS, tmp_path / "straight").run()

    class Interrupt(Exception):
        pass

    def stop_in_stage_1(m, total):
        if (m.stage, m.step) == (1, 2):  # the checkpoint holds 2 steps of stage 1; step 2 is lost
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(make_net(encoder_dims), data, SETTINGS, tmp_path / "broken").run(on_step=stop_in_stage_1)
    # Same base, other adapter and head init: everything trained must come from the checkpoint.
    resumed_net = make_net(encoder_dims, adapter_seed=99)
    Trainer(resumed_net, data, SETTINGS, tmp_path / "broken").run(resume=True)

    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "broken")
    assert [(r["stage"], r["step"]) for r in resumed] == [(r["stage"], r["step"]) for r in straight]
    for a, b in zip(straight, resumed):
        assert (a["loss_max"], a["loss_min"], a["configs"]) == (b["loss_max"], b["loss_min"], b["configs"]), (a, b)


def test_resume_refuses_other_settings_and_missing_checkpoints(encoder_dims, tmp_path):
    data = make_data(encoder_dims)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(make_net(encoder_dims), data, SETTINGS, tmp_path).run(resume=True)
    Trainer(make_net(encoder_dims), data, TrainSettings(batch_size=8, max_steps=2, subnets=3, stages=(0,)), tmp_path).run()
    other = TrainSettings(batch_size=8, max_steps=2, subnets=3, stages=(0,), gamma=0.0)
    with pytest.raises(CheckpointError, match="gamma"):
        Trainer(make_net(encoder_dims), data, other, tmp_path).run(resume=True)


def test_the_fd_projection_is_fixed_and_not_trained(encoder_dims, tmp_path):
    net = make_net(encoder_dims)
    trainer = Trainer(net, make_data(encoder_dims), SETTINGS, tmp_path)
    before = trainer.projection.clone()
    trainer.run()
    assert torch.equal(trainer.projection, before)
    assert not trainer.projection.requires_grad
    assert all(p is not trainer.projection for p in net.parameters())


def test_gradient_scaling_weights_small_subnets(encoder_dims, tmp_path):
    """gamma changes the stage-1/2 updates (smaller subnets have fewer active adapter numbers), not stage 0."""
    net = make_net(encoder_dims)
    n_max = net.active_adapter_numbers(net.max_config, stages=(1,))
    n_min = net.active_adapter_numbers(net.space.smallest(encoder_dims), stages=(1,))
    assert 0 < n_min < n_max
    data = make_data(encoder_dims)
    states = {}
    for gamma in (0.0, 2.0):
        settings = TrainSettings(batch_size=8, max_steps=2, subnets=3, gamma=gamma, stages=(0, 1), clip=1e9)
        n = make_net(encoder_dims)
        Trainer(n, data, settings, tmp_path / str(gamma)).run()
        states[gamma] = n.adapter_state()
    stage0 = [k for k in states[0.0] if k.endswith(".A.0")]
    stage1 = [k for k in states[0.0] if k.endswith(".A.1")]
    assert all(torch.equal(states[0.0][k], states[2.0][k]) for k in stage0)
    assert any(not torch.equal(states[0.0][k], states[2.0][k]) for k in stage1)


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_training_lowers_the_loss(encoder_dims, decoder_dims, tmp_path, task):
    dims = encoder_dims if task == "classification" else decoder_dims
    settings = TrainSettings(task=task, batch_size=8, epochs=5, stages=(0,), lr=1e-2, warmup=0.0)
    Trainer(make_net(dims, task), make_data(dims, n=64, task=task), settings, tmp_path).run()
    losses = [r["loss_max"] for r in rows(tmp_path)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="task"):
        TrainSettings(task="regression")
    with pytest.raises(ConfigError, match="stages"):
        TrainSettings(stages=(2, 1))
    with pytest.raises(ConfigError, match="subnets"):
        TrainSettings(subnets=1)
    with pytest.raises(ConfigError, match="alpha"):
        TrainSettings(alpha=1.5)


def _data_parallel_worker(rank: int, world: int, init_file: str, out: str, dims) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gc.disable()  # so only the trainer's own release can free a stage's DDP (checked below)
    try:
        torch.set_num_threads(1)
        net = make_net(dims)
        trainer = Trainer(net, make_data(dims, equal_length=True), SETTINGS, out)
        trainer.run()
        assert trainer.data_parallel_stages == list(SETTINGS.stages)
        # Every stage's DDP is freed before the group is torn down, not left to the garbage collector.
        assert trainer.forward_module is net
        assert not [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
        if rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in net.adapter_state().items()}, f"{out}/final.safetensors")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(encoder_dims, tmp_path):
    """Each rank takes half of every global batch; DDP averages gradients over ranks. Equal-length sequences
    make every per-rank token mean weigh the same, so the runs agree up to float summation order (1e-5)."""
    from safetensors.torch import load_file

    single = make_net(encoder_dims)
    Trainer(single, make_data(encoder_dims, equal_length=True), SETTINGS, tmp_path / "one").run()
    (tmp_path / "two").mkdir()
    mp.spawn(_data_parallel_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two"), encoder_dims), nprocs=2)
    final = load_file(str(tmp_path / "two" / "final.safetensors"))
    worst = max((final[k] - v).abs().max().item() for k, v in single.adapter_state().items())
    assert worst < 1e-5
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["configs"] for r in one] == [r["configs"] for r in two]
