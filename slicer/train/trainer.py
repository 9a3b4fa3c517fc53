"""MLFS training: stages 0-2 over one supernet, run by one loop (the paper's Algorithm 1).

Stage 0 fine-tunes the maxnet (A_0, B_0 and the task head). Stage 1 trains A_1, B_1 over sampled widths at
full depth; stage 2 trains A_2, B_2 over widths and depths. Every step runs the maxnet first, then the
smallest subnet of the stage (sandwich rule) and K-2 sampled ones; each subnet's loss is weighted by
(n_1 / n_j) ** gamma.

Determinism: batch order depends on (seed, stage, epoch) and subnet sampling on (seed, stage, step), so a
resumed run repeats the uninterrupted run's steps exactly, and data-parallel ranks agree on every subnet.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.batching import Examples, batch_indices, collate
from ..errors import CheckpointError, ConfigError
from ..nn.supernet import Supernet
from ..paths import atomic_directory
from ..spec.subnet_config import SubnetConfig
from ..spec.vocab import CAUSAL_LM, CLASSIFICATION, TASKS, Task
from .losses import (
    causal_lm_loss,
    classification_loss,
    fd_loss,
    feature_layer_pairs,
    fixed_projection,
    gradient_scale,
    kd_loss,
)

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """Defaults follow the paper (r = 8, alpha = 0.9, beta = 0.1, gamma = 2); every one is a flag."""

    task: Task = CLASSIFICATION
    stages: tuple[int, ...] = (0, 1, 2)
    epochs: float = 1.0  # per stage
    max_steps: int = 0  # per stage; 0 = no cap
    batch_size: int = 32
    max_len: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.06  # fraction of a stage's steps
    clip: float = 1.0
    subnets: int = 4  # K: the maxnet, the smallest subnet and K-2 sampled ones
    alpha: float = 0.9
    beta: float = 0.1
    gamma: float = 2.0
    temperature: float = 1.0
    feature_distillation: bool = True
    d_low: int = 128
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not one of {list(TASKS)}")
        if not self.stages or any(s not in (0, 1, 2) for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"stages: {list(self.stages)} must be increasing stage numbers from 0, 1, 2")
        if self.subnets < 2:
            raise ConfigError(f"subnets: {self.subnets} is too few; K >= 2 (the maxnet and the smallest subnet)")
        for name in ("alpha",):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: {getattr(self, name)} out of range; allowed 0..1")
        for name in ("lr", "batch_size", "max_len", "temperature", "d_low", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.gamma < 0 or self.beta < 0:
            raise ConfigError("gamma and beta must be >= 0")


@dataclass
class StepMetrics:
    stage: int
    step: int
    lr: float
    loss_max: float  # the maxnet's task loss
    loss_min: float | None  # the smallest subnet's total (unweighted) loss
    task_min: float | None  # the smallest subnet's task loss
    seconds: float
    configs: list[str] = field(default_factory=list)


def task_loss_fn(task: Task) -> Callable:
    return classification_loss if task == CLASSIFICATION else causal_lm_loss


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    def __init__(self, supernet: Supernet, data: Examples, settings: TrainSettings, out: Path,
                 device: torch.device | None = None) -> None:
        self.net, self.data, self.s, self.out = supernet, data, settings, Path(out)
        self.device = device or torch.device("cpu")
        self.rank, self.world = _world()
        if settings.batch_size % self.world:
            raise ConfigError(f"batch_size: {settings.batch_size} does not split over {self.world} processes")
        self.task_loss = task_loss_fn(settings.task)
        dims = supernet.dims
        self.projection = fixed_projection(settings.d_low, dims.hidden, settings.seed).to(self.device)
        self.anchors = supernet.space.smallest(dims).layers  # FD uses the maxnet layers the minnet keeps
        self.forward_module: nn.Module = supernet  # DDP over the supernet under torchrun, set per stage
        self.data_parallel_stages: list[int] = []  # stages whose gradients DDP synchronised
        self.steps_per_epoch = len(data) // settings.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch_size: {settings.batch_size} is larger than the training set ({len(data)})")

    # ----- schedule -----------------------------------------------------------------------------------------
    def stage_steps(self) -> int:
        steps = math.ceil(self.s.epochs * self.steps_per_epoch)
        return min(steps, self.s.max_steps) if self.s.max_steps else steps

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up, then linear decay to zero."""
        warm = max(1, round(self.s.warmup * total))
        if step < warm:
            return self.s.lr * (step + 1) / warm
        return self.s.lr * max(0.0, (total - step) / max(1, total - warm))

    def stage_configs(self, stage: int, step: int) -> list[SubnetConfig]:
        """The maxnet, then (stages 1-2) the stage's smallest subnet and K-2 sampled ones."""
        net, dims = self.net, self.net.dims
        configs = [net.max_config]
        if stage == 0:
            return configs
        space = net.space
        smallest = space.smallest(dims) if stage == 2 else SubnetConfig.uniform(
            dims, dims.num_layers, space.heads[0], space.ffn[0], space.hidden[0])
        rng = random.Random(f"{self.s.seed}:{stage}:{step}")
        configs.append(smallest)
        configs += [net.sample(rng, vary_depth=stage == 2) for _ in range(self.s.subnets - 2)]
        return configs

    def trainable(self, stage: int) -> list[tuple[str, torch.nn.Parameter]]:
        self.net.set_stage(stage)
        head = getattr(self.net.model, "head", None)
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(stage == 0)  # the paper fine-tunes the task head with the teacher only
        return [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]

    def _data_parallel(self, stage: int) -> nn.Module:
        """DDP over the supernet, rebuilt per stage: DDP hooks only the parameters trainable when it is built.

        Every subnet's backward is synchronised (an all-reduce is linear, so averaging each subnet's gradient
        equals averaging their sum). Only stage 2 drops layers, leaving some adapters without a gradient from a
        subnet: ``find_unused_parameters`` there, not in stages 0-1 where it would cost a graph walk per step.
        """
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.net, device_ids=ids, find_unused_parameters=stage == 2)

    def _release_data_parallel(self) -> None:
        """Free the last stage's DDP now, on every rank at the same point and while the process group is alive.

        DDP sits in a reference cycle, so dropping it leaves its reducer (hooks on the shared parameters, pending
        gloo work, a hold on the group) to whenever the garbage collector runs, even after destroy_process_group:
        a rank once aborted in CI with "terminate called without an active exception".
        """
        if self.forward_module is not self.net:
            self.forward_module = self.net
            gc.collect()

    # ----- one step -----------------------------------------------------------------------------------------
    def step(self, stage: int, step: int, params: list[torch.nn.Parameter]) -> StepMetrics:
        s, net = self.s, self.net
        start = time.perf_counter()
        idx = batch_indices(len(self.data), s.batch_size, s.seed, stage, step, self.rank, self.world)
        batch = {k: v.to(self.device) for k, v in collate(self.data, idx).items()}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        mask = batch["attention_mask"]
        configs = self.stage_configs(stage, step)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        n_max = net.active_adapter_numbers(configs[0], stages=(stage,))
        metrics: dict[str, Any] = {}

        for j, cfg in enumerate(configs):
            net.set_active(cfg)
            with autocast:
                out = self.forward_module(**inputs, output_hidden_states=s.feature_distillation)
                task = self.task_loss(out, batch)
                if j == 0:
                    loss = task  # alpha = 0 for the maxnet
                    teacher_logits = out.logits.detach()
                    teacher_states = [h.detach() for h in out.hidden_states] if out.hidden_states else None
                    metrics["loss_max"] = task.item()
                else:
                    kd_mask = mask if s.task == CAUSAL_LM else None
                    distill = kd_loss(out.logits, teacher_logits, s.temperature, kd_mask)
                    if s.feature_distillation:
                        pairs = feature_layer_pairs(cfg.layers, self.anchors)
                        distill = distill + fd_loss(out.hidden_states, teacher_states, pairs, self.projection, s.beta, mask)
                    loss = (1 - s.alpha) * task + s.alpha * distill
                    if j == 1:
                        metrics["loss_min"], metrics["task_min"] = loss.item(), task.item()
                    loss = loss * gradient_scale(n_max, net.active_adapter_numbers(cfg, stages=(stage,)), s.gamma)
            loss.backward()
        net.set_max()
        torch.nn.utils.clip_grad_norm_(params, s.clip)
        return StepMetrics(stage, step, 0.0, metrics["loss_max"], metrics.get("loss_min"), metrics.get("task_min"),
                           time.perf_counter() - start, [c.describe() for c in configs])

    # ----- the loop -----------------------------------------------------------------------------------------
    def run(self, resume: bool = False, on_step: Callable[[StepMetrics, int], None] | None = None,
            on_stage_end: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Run the stages; ``on_stage_end(stage)`` after each stage's last step (the net is put back in training
        mode and at its maxnet afterwards)."""
        s = self.s
        self.net.train()
        position = self.load_checkpoint() if resume else None
        self.out.mkdir(parents=True, exist_ok=True)
        if position and self.rank == 0:
            self._truncate_metrics(position)
        metrics_log = (self.out / "metrics.jsonl").open("a" if resume else "w") if self.rank == 0 else None
        started = time.perf_counter()
        total = self.stage_steps()
        try:
            for stage in s.stages:
                if position and stage < position["stage"]:
                    continue
                named = self.trainable(stage)
                params = [p for _, p in named]
                if self.world > 1:
                    self._release_data_parallel()
                    self.forward_module = self._data_parallel(stage)
                    self.data_parallel_stages.append(stage)
                opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
                first = 0
                if position and stage == position["stage"]:
                    first = position["step"]
                    self._load_optimizer(opt, named)
                    position = None
                for step in range(first, total):
                    lr = self.lr_at(step, total)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    m = self.step(stage, step, params)
                    m.lr = lr
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if metrics_log:
                        metrics_log.write(json.dumps(asdict(m)) + "\n")
                        metrics_log.flush()
                    if on_step:
                        on_step(m, total)
                    done = step + 1
                    if done % s.checkpoint_every == 0 or done == total:
                        self.save_checkpoint(stage, done, opt, named)
                if on_stage_end:
                    on_stage_end(stage)
                    self.net.set_max()
                    self.net.train()
        finally:
            self._release_data_parallel()
            if metrics_log:
                metrics_log.close()
        return {"seconds": time.perf_counter() - started, "steps_per_stage": total}

    # ----- checkpoints (safetensors + JSON: nothing is unpickled) --------------------------------------------
    def save_checkpoint(self, stage: int, step: int, opt: torch.optim.Optimizer, named) -> None:
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in {**self.net.adapter_state(), **self.net.head_state()}.items()}
        for name, p in named:
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"opt.{name}.{key}"] = state[key].detach().contiguous().cpu()
        steps = {name: float(opt.state[p]["step"]) for name, p in named if p in opt.state}
        with atomic_directory(self.out / CHECKPOINT) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "position.json").write_text(json.dumps({"stage": stage, "step": step, "opt_steps": steps,
                                                           "settings": asdict(self.s)}))

    def load_checkpoint(self) -> dict[str, Any] | None:
        folder = self.out / CHECKPOINT
        if not (folder / "position.json").is_file():
            raise CheckpointError(f"--resume: no checkpoint in {folder}")
        position = json.loads((folder / "position.json").read_text())
        saved = {k: v for k, v in position["settings"].items() if k not in ("checkpoint_every", "max_steps")}
        now = {k: v for k, v in asdict(self.s).items() if k not in ("checkpoint_every", "max_steps")}
        saved["stages"] = tuple(saved["stages"])
        if saved != now:
            diff = {k: (saved[k], now[k]) for k in now if saved.get(k) != now[k]}
            raise CheckpointError(f"--resume: settings differ from the checkpointed run: {diff}")
        tensors = load_file(str(folder / "state.safetensors"))
        with torch.no_grad():
            for k, v in {**self.net.adapter_state(), **self.net.head_state()}.items():
                v.copy_(tensors[f"model.{k}"])
        self._resume_tensors, self._resume_steps = tensors, position["opt_steps"]
        if position["step"] >= self.stage_steps():  # that stage was finished: start the next one
            later = [st for st in self.s.stages if st > position["stage"]]
            return {"stage": later[0], "step": 0} if later else {"stage": 3, "step": 0}
        return position

    def _truncate_metrics(self, position: dict[str, Any]) -> None:
        """Drop log rows written after the checkpoint (a crash between checkpoints), so resumed rows follow on."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            rows = [r for r in path.read_text().splitlines() if r.strip()]
            keep = [r for r in rows if (json.loads(r)["stage"], json.loads(r)["step"]) < (position["stage"], position["step"])]
            path.write_text("".join(r + "\n" for r in keep))

    def _load_optimizer(self, opt: torch.optim.Optimizer, named) -> None:
        for name, p in named:
            if name in self._resume_steps:
                opt.state[p] = {
                    "step": torch.tensor(self._resume_steps[name]),
                    "exp_avg": self._resume_tensors[f"opt.{name}.exp_avg"].to(p.device),
                    "exp_avg_sq": self._resume_tensors[f"opt.{name}.exp_avg_sq"].to(p.device),
                }
