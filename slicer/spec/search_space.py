"""SearchSpace: the choices per dimension that training samples from and the palette enumerates. Torch-free."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .dims import ModelDims
from .subnet_config import SubnetConfig, depth_map_for

DIMENSIONS = ("layers", "heads", "ffn", "hidden")


@dataclass(frozen=True)
class SearchSpace:
    """Allowed layer counts, heads, FFN widths and hidden sizes.

    ``per_layer`` lets sampling pick heads and FFN width independently for every kept layer; enumeration
    always lists uniform configs (per-layer combinations are too many to list).
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    hidden: tuple[int, ...]
    per_layer: bool = False

    def __post_init__(self) -> None:
        for name in DIMENSIONS:
            values = getattr(self, name)
            if isinstance(values, int) and not isinstance(values, bool):
                values = (values,)
            if not isinstance(values, list | tuple) or not values:
                raise ConfigError(f"search space {name}: expected a non-empty list of integers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ConfigError(f"search space {name}: expected integers, got {list(values)}")
            object.__setattr__(self, name, tuple(sorted(set(values))))

    @classmethod
    def default(cls, dims: ModelDims) -> SearchSpace:
        """Half to full depth; heads and FFN at 1/2, 3/4 and all of the teacher; full hidden size."""
        g = dims.group_size
        heads = {max(g, round(dims.num_heads * f / g) * g) for f in (0.5, 0.75, 1.0)}
        ffn = {round(dims.ffn * f) for f in (0.5, 0.75, 1.0)}
        layers = range((dims.num_layers + 1) // 2, dims.num_layers + 1)
        return cls(tuple(layers), tuple(heads), tuple(ffn), (dims.hidden,))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        allowed = (*DIMENSIONS, "per_layer")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"search space: unknown key(s) {unknown}; allowed keys are {list(allowed)}")
        missing = [k for k in DIMENSIONS if k not in data]
        if missing:
            raise ConfigError(f"search space: missing key(s) {missing}")
        per_layer = data.get("per_layer", False)
        if not isinstance(per_layer, bool):
            raise ConfigError(f"search space per_layer: expected true or false, got {per_layer!r}")
        return cls(**{k: data[k] for k in DIMENSIONS}, per_layer=per_layer)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Read a YAML or JSON file (YAML is a superset of JSON)."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"search space file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"search space file {path}: not valid YAML/JSON ({err})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"search space file {path}: expected a mapping with keys {list(DIMENSIONS)}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: list(getattr(self, k)) for k in DIMENSIONS}, "per_layer": self.per_layer}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def validate(self, dims: ModelDims) -> SearchSpace:
        """Every choice must make a valid config of ``dims``; errors name the dimension and value."""
        for n in self.layers:
            depth_map_for(dims, n)
        for h in self.heads:
            SubnetConfig((0,), (h,), (dims.ffn,), dims.hidden).validate(dims)
        for f in self.ffn:
            SubnetConfig((0,), (dims.num_heads,), (f,), dims.hidden).validate(dims)
        for d in self.hidden:
            SubnetConfig((0,), (dims.num_heads,), (dims.ffn,), d).validate(dims)
        return self

    def largest(self, dims: ModelDims) -> SubnetConfig:
        return SubnetConfig.uniform(dims, self.layers[-1], self.heads[-1], self.ffn[-1], self.hidden[-1])

    def smallest(self, dims: ModelDims) -> SubnetConfig:
        return SubnetConfig.uniform(dims, self.layers[0], self.heads[0], self.ffn[0], self.hidden[0])

    def enumerate(self, dims: ModelDims) -> Iterator[SubnetConfig]:
        """All uniform configs, smallest first."""
        for n, h, f, d in itertools.product(self.layers, self.heads, self.ffn, self.hidden):
            yield SubnetConfig.uniform(dims, n, h, f, d)

    def __len__(self) -> int:
        return len(self.layers) * len(self.heads) * len(self.ffn) * len(self.hidden)

    def sample(self, dims: ModelDims, rng: random.Random, vary_depth: bool = True) -> SubnetConfig:
        """A random config; with ``vary_depth=False`` depth stays at the maximum (MLFS stage 1)."""
        n = rng.choice(self.layers) if vary_depth else self.layers[-1]
        if self.per_layer:
            heads = tuple(rng.choice(self.heads) for _ in range(n))
            ffn = tuple(rng.choice(self.ffn) for _ in range(n))
        else:
            heads, ffn = (rng.choice(self.heads),) * n, (rng.choice(self.ffn),) * n
        return SubnetConfig(depth_map_for(dims, n), heads, ffn, rng.choice(self.hidden)).validate(dims)
