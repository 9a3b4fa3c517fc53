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
import os
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


def palette_data_fingerprint(table: Mapping[str, Any]) -> str | None:
    """The fingerprint of the evaluation data a palette's numbers come from (older tables: ``data_fingerprint``)."""
    data = table.get("data")
    if isinstance(data, dict) and data.get("fingerprint"):
        return str(data["fingerprint"])
    return table.get("data_fingerprint")


def palette_table(rows: list[dict[str, Any]], task: Task, data: dict[str, Any]) -> dict[str, Any]:
    """The palette JSON: task, metric, where the numbers come from (``data``: name, split, file, fingerprint of
    the split's content, examples; ``data_fingerprint`` repeats the fingerprint for older readers), rows."""
    return {"task": task, "metric": metric_of(task), "data": data, "data_fingerprint": data["fingerprint"],
            "configs": rows}


def check_mergeable(folder: Path, task: Task, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The existing table in ``folder`` (None if there is none), or ConfigError when rows for ``data`` may not be
    merged into it (its numbers come from other data or another task). Callers check before evaluating."""
    path = Path(folder) / PALETTE_FILE
    old = read_palette(folder)
    if old is None:
        return None
    old_fp = palette_data_fingerprint(old)
    if old.get("task") != task or old_fp != data["fingerprint"]:
        where = old.get("data") or {}
        raise ConfigError(
            f"{path} holds {old.get('task')} numbers for other data ({where.get('name', 'unknown data')} "
            f"{where.get('split', '')}, fingerprint {str(old_fp)[:12]}...), these would be for {data['name']} "
            f"{data['split']} ({data['fingerprint'][:12]}...); a palette never mixes data sets: write this "
            "table elsewhere with --out FILE")
    return old


def write_palette(folder: Path, rows: list[dict[str, Any]], task: Task, data: dict[str, Any] | str,
                  merge: bool = False) -> Path:
    """Write ``palette.json`` in ``folder``; returns its path. ``data`` says where the numbers come from (a bare
    string is a fingerprint alone). With ``merge`` an existing table keeps its other rows (re-evaluated configs
    are replaced, new ones added), and is refused if its numbers come from other data or another task: one table
    never mixes data sets. Written to a temporary file and renamed, so a reader never sees half a table."""
    if isinstance(data, str):
        data = {"name": None, "split": None, "file": None, "fingerprint": data, "examples": None}
    path = Path(folder) / PALETTE_FILE
    old = check_mergeable(folder, task, data) if merge else None
    if old is not None:
        fresh = {r["key"]: r for r in rows}
        rows = [fresh.pop(r["key"], r) for r in old.get("configs", [])] + list(fresh.values())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(palette_table(rows, task, data), indent=2))
    os.replace(tmp, path)
    return path
