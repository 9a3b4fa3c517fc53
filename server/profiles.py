"""Device profiles: named resources that latency tables are measured under (emulated here with onnxruntime
thread counts and memory budgets). A small built-in set, extendable with a YAML file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ProfileError


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    memory_mb: int
    speed_score: float = 1.0  # relative CPU speed; 1.0 = the machine the tables were measured on

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ProfileError(f"profile name {self.name!r}: use letters, digits, '-' and '_'")
        if self.threads < 1 or self.memory_mb < 1 or self.speed_score <= 0:
            raise ProfileError(f"profile {self.name}: threads, memory_mb and speed_score must be positive")


BUILTIN = (
    DeviceProfile("tiny-1t-512m", threads=1, memory_mb=512),
    DeviceProfile("small-2t-1g", threads=2, memory_mb=1024),
    DeviceProfile("large-all-4g", threads=max(1, os.cpu_count() or 1), memory_mb=4096),
)


def load_profiles(path: Path | None = None) -> dict[str, DeviceProfile]:
    """The built-in profiles, plus (overriding by name) those in a YAML list of mappings."""
    profiles = {p.name: p for p in BUILTIN}
    if path is None:
        return profiles
    try:
        items = yaml.safe_load(Path(path).read_text()) or []
    except (OSError, yaml.YAMLError) as err:
        raise ProfileError(f"profiles file {path}: {err}") from None
    if not isinstance(items, list):
        raise ProfileError(f"profiles file {path}: expected a list of profiles")
    for item in items:
        if not isinstance(item, dict) or set(item) - {"name", "threads", "memory_mb", "speed_score"}:
            raise ProfileError(f"profiles file {path}: each profile has name, threads, memory_mb[, speed_score]: {item!r}")
        try:
            profile = DeviceProfile(**item)
        except TypeError as err:
            raise ProfileError(f"profiles file {path}: {err}") from None
        profiles[profile.name] = profile
    return profiles
