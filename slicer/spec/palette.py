"""A palette table (``palette.json`` beside an adapter stack): one row per evaluated config, and what its
quality number means. Torch-free, so the server and the evaluation share one reader, one writer and one sign.

A row holds ``key``, ``config``, ``shape``, ``params_total``, ``params_non_embedding`` and the task's metrics:
``accuracy`` and ``loss`` (classification) or ``loss`` and ``perplexity`` (causal LM). The table's ``metric``
names the column that ranks rows: ``accuracy`` (higher is better) or ``loss`` (lower is better).

*Quality* is the one number every response shows: higher is always better, so it is the accuracy, or the
negative loss for language models (:func:`row_quality`, named ``accuracy`` or ``neg_loss`` by
:func:`quality_metric`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .vocab import TASKS, Task

PALETTE_FILE = "palette.json"
METRIC_OF_TASK = {"classification": "accuracy", "causal-lm": "loss"}
QUALITY_METRICS = {"accuracy": "accuracy", "loss": "neg_loss"}  # table metric -> what quality is


def metric_of(task: Task) -> str:
    """The metric that ranks a task's palette: ``accuracy`` (classification) or ``loss`` (causal LM)."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    return METRIC_OF_TASK[task]


def row_quality(row: Mapping[str, Any] | None, metric: str | None) -> float | None:
    """A palette row's quality, higher is better: its accuracy, or minus its loss; None without a row/metric."""
    if row is None or metric not in QUALITY_METRICS or row.get(metric) is None:
        return None
    value = float(row[metric])
    return value if metric == "accuracy" else -value


def quality_metric(metric: str | None) -> str | None:
    """What :func:`row_quality` returns for a table ranked by ``metric``: ``accuracy`` or ``neg_loss``."""
    return QUALITY_METRICS.get(metric or "")


def read_palette(folder: Path | None) -> dict[str, Any] | None:
    """A stack's palette table, or None when the folder has none. A table must name its task, its metric and a
    list of config rows (raises ConfigError otherwise)."""
    if folder is None or not (Path(folder) / PALETTE_FILE).is_file():
        return None
    path = Path(folder) / PALETTE_FILE
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a palette table ({err})") from None
    if not isinstance(table, dict) or not isinstance(table.get("configs"), list):
        raise ConfigError(f"{path}: not a palette table (no 'configs' list)")
    return table


def write_palette(folder: Path, rows: list[dict[str, Any]], task: Task, data_fingerprint: str) -> Path:
    """Write the table (task, metric, fingerprint of the evaluation data, rows); returns its path."""
    path = Path(folder) / PALETTE_FILE
    path.write_text(json.dumps({"task": task, "metric": metric_of(task), "data_fingerprint": data_fingerprint,
                                "configs": rows}, indent=2))
    return path
