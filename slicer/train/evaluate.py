"""Palette evaluation: accuracy (classification) or loss/perplexity (causal LM) of each config.

Each config is evaluated through the supernet at that config, which computes exactly what the extracted
subnet computes (tested), without building one model per config.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..data.batching import Examples, eval_batches
from ..errors import ConfigError
from ..nn.supernet import Supernet
from ..spec.subnet_config import SubnetConfig

PALETTE_FILE = "palette.json"


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], task: str,
                   device: torch.device | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy (classification), or token-weighted loss and perplexity (causal LM)."""
    model.eval()
    if task == "classification":
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


def evaluate_config(net: Supernet, cfg: SubnetConfig, batches: list[dict[str, torch.Tensor]], task: str,
                    device: torch.device | None = None) -> dict[str, float]:
    """The supernet at ``cfg`` computes exactly the extracted subnet (tested), so no model is built per config."""
    net.set_active(cfg)
    try:
        return evaluate_model(net, batches, task, device)
    finally:
        net.set_max()


def evaluate_palette(net: Supernet, configs: Iterable[SubnetConfig], data: Examples, task: str,
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


def read_palette(folder: Path | None) -> dict[str, Any] | None:
    """A stack's palette table (``palette.json``), or None when the folder has none."""
    if folder is None or not (Path(folder) / PALETTE_FILE).is_file():
        return None
    return json.loads((Path(folder) / PALETTE_FILE).read_text())


def palette_data_fingerprint(table: dict[str, Any]) -> str | None:
    """The fingerprint of the evaluation data a palette's numbers come from (older tables: ``data_fingerprint``)."""
    data = table.get("data")
    if isinstance(data, dict) and data.get("fingerprint"):
        return str(data["fingerprint"])
    return table.get("data_fingerprint")


def palette_table(rows: list[dict[str, Any]], task: str, data: dict[str, Any]) -> dict[str, Any]:
    """The palette JSON: the metric per config and where the numbers come from (``data``: name, split, file,
    fingerprint, examples)."""
    metric = "accuracy" if task == "classification" else "loss"
    return {"task": task, "metric": metric, "data": data, "data_fingerprint": data["fingerprint"], "configs": rows}


def check_mergeable(folder: Path, task: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The existing table in ``folder`` (None if there is none), or ConfigError when rows for ``data`` may not be
    merged into it (its numbers come from other data or another task). Callers check before evaluating."""
    path = Path(folder) / PALETTE_FILE
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    old_fp = palette_data_fingerprint(old)
    if old.get("task") != task or old_fp != data["fingerprint"]:
        where = old.get("data") or {}
        raise ConfigError(
            f"{path} holds {old.get('task')} numbers for other data ({where.get('name', 'unknown data')} "
            f"{where.get('split', '')}, fingerprint {str(old_fp)[:12]}...), these would be for {data['name']} "
            f"{data['split']} ({data['fingerprint'][:12]}...); a palette never mixes data sets: write this "
            "table elsewhere with --out FILE")
    return old


def write_palette(folder: Path, rows: list[dict[str, Any]], task: str, data: dict[str, Any] | str,
                  merge: bool = False) -> Path:
    """Write ``palette.json`` in ``folder``. ``data`` says where the numbers come from (name, split, file,
    fingerprint, examples; a bare string is a fingerprint alone). With ``merge`` an existing table keeps its other
    rows (re-evaluated configs are replaced, new ones added), and is refused if its numbers come from other data
    or another task: one table never mixes data sets."""
    if isinstance(data, str):
        data = {"name": None, "split": None, "file": None, "fingerprint": data, "examples": None}
    path = Path(folder) / PALETTE_FILE
    if merge and path.is_file():
        old = check_mergeable(folder, task, data)
        fresh = {r["key"]: r for r in rows}
        kept = [fresh.pop(r["key"], r) for r in old.get("configs", [])]
        rows = kept + list(fresh.values())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(palette_table(rows, task, data), indent=2))
    os.replace(tmp, path)
    return path
