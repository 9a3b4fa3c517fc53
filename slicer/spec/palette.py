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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PaletteTable:
    """``palette.json``: the task, the metric that ranks rows, where the numbers come from and the rows.

    ``data`` holds name, split, file, ``fingerprint`` of the split's content and examples (older tables: the
    fingerprint alone, as ``data_fingerprint``). Rows stay plain dicts because their metric columns depend on the
    task; ``read`` checks each names its ``key`` and that the metric column, when present, is a number.
    ``read``/``write`` are the one reader and writer (:func:`read_palette` and :func:`write_palette` use them)."""

    task: Task
    metric: str
    data: dict[str, Any]
    rows: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, rows: list[dict[str, Any]], task: Task, data: dict[str, Any]) -> PaletteTable:
        """A table of freshly evaluated rows (the metric follows the task)."""
        return cls(task, metric_of(task), dict(data), tuple(rows))

    @property
    def data_fingerprint(self) -> str | None:
        """The fingerprint of the evaluation data the numbers come from."""
        return self.data.get("fingerprint")

    def row(self, key: str) -> dict[str, Any] | None:
        """The row of the config with this key, if the table has one."""
        return next((r for r in self.rows if r.get("key") == key), None)

    def quality(self, key: str) -> float | None:
        """The config's quality, higher is better (:func:`row_quality`); None without a row."""
        return row_quality(self.row(key), self.metric)

    def to_dict(self) -> dict[str, Any]:
        # data_fingerprint repeats data.fingerprint for older readers.
        return {"task": self.task, "metric": self.metric, "data": self.data, "data_fingerprint": self.data_fingerprint,
                "configs": list(self.rows)}

    def write(self, path: Path) -> Path:
        """Write the table to ``path`` (a temporary file renamed over it: a reader never sees half a table)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path) -> PaletteTable:
        """The table in ``path``; ConfigError naming the file when it is missing, not JSON or malformed."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a palette table ({err})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("configs"), list):
            raise ConfigError(f"{path}: not a palette table (no 'configs' list)")
        task = raw.get("task")
        if task not in TASKS:
            raise ConfigError(f"{path}: task {task!r} is not one of {', '.join(TASKS)}")
        metric = raw.get("metric") or metric_of(task)
        if metric not in QUALITY_METRICS:
            raise ConfigError(f"{path}: metric {metric!r} is not one of {', '.join(QUALITY_METRICS)}")
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        if not data.get("fingerprint") and raw.get("data_fingerprint"):
            data = {**data, "fingerprint": str(raw["data_fingerprint"])}  # older tables: the fingerprint alone
        for i, row in enumerate(raw["configs"]):
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                raise ConfigError(f"{path}: configs[{i}] has no 'key'")
            value = row.get(metric)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{path}: configs[{i}] {metric} is {value!r}, not a number")
        return cls(task, metric, data, tuple(raw["configs"]))


def read_palette(folder: Path | None) -> PaletteTable | None:
    """The palette table beside a stack (``folder/palette.json``), or None when the folder has none."""
    if folder is None or not (Path(folder) / PALETTE_FILE).is_file():
        return None
    return PaletteTable.read(Path(folder) / PALETTE_FILE)


def check_mergeable(folder: Path, task: Task, data: Mapping[str, Any]) -> PaletteTable | None:
    """The existing table in ``folder`` (None if there is none), or ConfigError when rows for ``data`` may not be
    merged into it (its numbers come from other data or another task). Callers check before evaluating."""
    old = read_palette(folder)
    if old is None:
        return None
    if old.task != task or old.data_fingerprint != data["fingerprint"]:
        where = old.data
        raise ConfigError(
            f"{Path(folder) / PALETTE_FILE} holds {old.task} numbers for other data ({where.get('name') or 'unknown data'} "
            f"{where.get('split') or ''}, fingerprint {str(old.data_fingerprint)[:12]}...), these would be for "
            f"{data['name']} {data['split']} ({data['fingerprint'][:12]}...); a palette never mixes data sets: write "
            "this table elsewhere with --out FILE")
    return old


def write_palette(folder: Path, rows: list[dict[str, Any]], task: Task, data: dict[str, Any] | str,
                  merge: bool = False) -> Path:
    """Write ``palette.json`` in ``folder``; returns its path. ``data`` says where the numbers come from (a bare
    string is a fingerprint alone). With ``merge`` an existing table keeps its other rows (re-evaluated configs
    are replaced, new ones added), and is refused if its numbers come from other data or another task: one table
    never mixes data sets."""
    if isinstance(data, str):
        data = {"name": None, "split": None, "file": None, "fingerprint": data, "examples": None}
    old = check_mergeable(folder, task, data) if merge else None
    if old is not None:
        fresh = {r["key"]: r for r in rows}
        rows = [fresh.pop(r["key"], r) for r in old.rows] + list(fresh.values())
    return PaletteTable.of(rows, task, data).write(Path(folder) / PALETTE_FILE)
