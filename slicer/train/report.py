"""``report.json``: what a training run did (base, settings, data, timings, stage summaries, the palette rows).

Torch-free, so the CLI and benchmarks read it without loading a model. :class:`TrainingReport` is its one writer
(``write``) and one reader (``read``); reports written before the format was named read as version 1.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..spec.search_space import SearchSpace
from ..spec.vocab import TASKS, Task

REPORT_FILE = "report.json"
REPORT_FORMAT = "mlfs-report/1"
READABLE_REPORT_FORMATS = (REPORT_FORMAT,)


@dataclass(frozen=True)
class TrainingReport:
    """One training run. ``settings`` and ``data`` are records as training wrote them (TrainSettings as a dict;
    the data's sizes, label names, fingerprints), kept as dicts so old reports read whatever fields they had.
    ``palette`` holds the final evaluation's rows (empty with ``--eval-configs 0``)."""

    base: str
    base_fingerprint: str
    task: Task
    rank: int
    search_space: SearchSpace
    settings: dict[str, Any]
    data: dict[str, Any]
    train_seconds: float
    eval_seconds: float
    steps_per_stage: int
    steps_by_stage: dict[str, int]
    device: str
    palette: list[dict[str, Any]]
    adapters: dict[str, Any] = field(default_factory=dict)  # stage_ranks, vector_deltas, head_deltas
    reordered: bool = False
    stage_summaries: list[dict[str, Any]] = field(default_factory=list)
    threads: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # any other key (provenance notes added later), kept

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": REPORT_FORMAT}
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if isinstance(value, SearchSpace) else value
        return {**out, **self.extra}

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> TrainingReport:
        """The report in a run folder; ConfigError naming the file when it is missing, malformed or of an
        unknown format."""
        path = Path(run_dir) / REPORT_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: not a training report ({err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: not a training report (a JSON object was expected)")
        found = raw.get("format", REPORT_FORMAT)  # reports before the format was named are version 1
        if found not in READABLE_REPORT_FORMATS:
            raise ConfigError(f"{path}: format {found!r}, expected one of {list(READABLE_REPORT_FORMATS)}")
        names = {f.name for f in fields(cls)} - {"extra"}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ConfigError(f"{path}: not a training report (missing {', '.join(missing)})")
        if raw["task"] not in TASKS:
            raise ConfigError(f"{path}: task {raw['task']!r} is not one of {', '.join(TASKS)}")
        values = {n: raw[n] for n in names if n in raw}
        try:
            values["search_space"] = SearchSpace.from_dict(raw["search_space"])
        except (ConfigError, TypeError, AttributeError) as err:
            raise ConfigError(f"{path}: search_space: {err}") from None
        for name, kind in (("settings", dict), ("data", dict), ("steps_by_stage", dict), ("palette", list),
                           ("adapters", dict), ("stage_summaries", list), ("versions", dict)):
            if name in values and not isinstance(values[name], kind):
                raise ConfigError(f"{path}: {name} must be a JSON {'object' if kind is dict else 'list'}")
        extra = {k: v for k, v in raw.items() if k not in names and k != "format"}
        return cls(**values, extra=extra)
