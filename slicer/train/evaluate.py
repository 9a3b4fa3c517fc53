"""Palette evaluation: accuracy (classification) or loss/perplexity (causal LM) of each config.

Each config is evaluated through the supernet at that config, which computes exactly what the extracted
subnet computes (tested), without building one model per config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..data.batching import Examples, eval_batches
from ..errors import ConfigError
from ..nn.supernet import Supernet
from ..spec.subnet_config import SubnetConfig
from ..spec.vocab import CLASSIFICATION, Task


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], task: Task,
                   device: torch.device | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy (classification), or token-weighted loss and perplexity (causal LM)."""
    model.eval()
    if task == CLASSIFICATION:
        correct = total = 0
        loss_sum = 0.0
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()} if device else b
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            correct += (logits.argmax(-1) == b["labels"]).sum().item()
            loss_sum += torch.nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum").item()
            total += len(b["labels"])
        return {"accuracy": correct / total, "loss": loss_sum / total}
    loss_sum = tokens = 0.0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()} if device else b
        logits = model(**b).logits[:, :-1].float()
        target = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
        loss_sum += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum", ignore_index=-100).item()
        tokens += (target != -100).sum().item()
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def evaluate_config(net: Supernet, cfg: SubnetConfig, batches: list[dict[str, torch.Tensor]], task: Task,
                    device: torch.device | None = None) -> dict[str, float]:
    """The supernet at ``cfg`` computes exactly the extracted subnet (tested), so no model is built per config."""
    net.set_active(cfg)
    try:
        return evaluate_model(net, batches, task, device)
    finally:
        net.set_max()


def evaluate_palette(net: Supernet, configs: Iterable[SubnetConfig], data: Examples, task: Task,
                     batch_size: int = 64, device: torch.device | None = None,
                     on_config: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per config: key, config, label, parameter counts and the task metric."""
    dims, batches = net.dims, eval_batches(data, batch_size)
    rows = []
    for cfg in configs:
        count = cfg.param_count(dims)
        row = {"key": cfg.key, "config": cfg.to_dict(), "shape": cfg.describe(), "params_total": count.total,
               "params_non_embedding": count.non_embedding, **evaluate_config(net, cfg, batches, task, device)}
        rows.append(row)
        if on_config:
            on_config(row)
    return rows


def resolve_configs(net: Supernet, spec: str | None) -> list[SubnetConfig]:
    """``grid`` (default): every uniform config of the search space; a number N: N of them, evenly spaced by
    size from the smallest to the largest (both always kept); else a JSON file with a list of configs."""
    grid = list(net.space.enumerate(net.dims))
    if spec in (None, "grid"):
        return grid
    if spec.isdigit():
        return spread(grid, int(spec), net.dims)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"configs: {spec!r} is neither 'grid', a number of configs nor an existing JSON file")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"configs {path}: not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"configs {path}: expected a non-empty JSON list of configs")
    return [SubnetConfig.parse(item, net.dims) for item in items]


def spread(configs: list[SubnetConfig], n: int, dims: Any) -> list[SubnetConfig]:
    """``n`` configs evenly spaced by parameter count, smallest and largest included."""
    if n < 1:
        raise ConfigError(f"configs: {n} configs asked for; give at least 1 (or 'grid' for all)")
    ordered = sorted(configs, key=lambda c: c.param_count(dims).total)
    if n >= len(ordered):
        return ordered
    if n == 1:
        return [ordered[-1]]
    picks = sorted({round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)})
    return [ordered[i] for i in picks]
