"""SubnetConfig: the one config type the slicer, the API, the cache and the client speak. Torch-free.

Users write a config as JSON, the same everywhere::

    {"layers": 3, "heads": 6, "ffn": 768, "hidden": 384}

``layers`` is a count (the depth map picks which layers) or an explicit list of kept layer indices;
``heads`` and ``ffn`` are one number for every kept layer or a list with one per kept layer; a missing key
means the maximum.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .dims import ModelDims
from .shapes import is_embedding, parameter_shapes
from .vocab import DECODER

USER_KEYS = ("layers", "heads", "ffn", "hidden")
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def depth_map(num_layers: int, keep: int, keep_first: bool = False) -> tuple[int, ...]:
    """Which of ``num_layers`` teacher layers a ``keep``-layer subnet keeps: spread evenly, the last one always.

    6 layers, keep 3 -> (1, 3, 5). Spreading keeps the model's processing stages; the last layer stays
    because the output head was trained on its features. With ``keep_first`` (decoders) the first layer
    stays too: a Llama-style decoder's layer 0 turns raw token embeddings into the residual stream the rest
    reads, and slices without it start far worse than random initialisation (measured on SmolLM2).
    """
    if not 1 <= keep <= num_layers:
        raise ConfigError(f"layers: {keep} is out of range; allowed 1..{num_layers}")
    if keep_first and keep > 1:
        return tuple(math.floor(i * (num_layers - 1) / (keep - 1) + 0.5) for i in range(keep))
    return tuple(math.floor((i + 1) * num_layers / keep + 0.5) - 1 for i in range(keep))


def depth_map_for(dims: ModelDims, keep: int) -> tuple[int, ...]:
    """The family's depth map: decoders keep their first layer as well as their last."""
    return depth_map(dims.num_layers, keep, keep_first=dims.family == DECODER)


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


@functools.lru_cache(maxsize=8192)  # selection asks for the same few dozen configs on every request
def _param_count(cfg: SubnetConfig, dims: ModelDims) -> ParamCount:
    total = embedding = 0
    for name, shape in parameter_shapes(dims, cfg).items():
        n = math.prod(shape)
        total += n
        embedding += n if is_embedding(name) else 0
    return ParamCount(total, embedding)


@dataclass(frozen=True)
class SubnetConfig:
    """A subnet of a base model: kept layers (teacher indices), heads and FFN width per kept layer, hidden size."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    hidden: int

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "ffn"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.layers:
            raise ConfigError("layers: a subnet keeps at least one layer")
        if len(self.heads) != len(self.layers) or len(self.ffn) != len(self.layers):
            raise ConfigError(
                f"heads/ffn: need one value per kept layer ({len(self.layers)}), "
                f"got {len(self.heads)} heads and {len(self.ffn)} ffn values"
            )

    # ----- construction -------------------------------------------------------------------------------------
    @classmethod
    def maximal(cls, dims: ModelDims) -> SubnetConfig:
        n = dims.num_layers
        return cls(tuple(range(n)), (dims.num_heads,) * n, (dims.ffn,) * n, dims.hidden)

    @classmethod
    def uniform(cls, dims: ModelDims, layers: int, heads: int, ffn: int, hidden: int | None = None) -> SubnetConfig:
        kept = depth_map_for(dims, layers)
        cfg = cls(kept, (heads,) * layers, (ffn,) * layers, dims.hidden if hidden is None else hidden)
        return cfg.validate(dims)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | SubnetConfig, dims: ModelDims) -> SubnetConfig:
        """Read the user form (a dict or its JSON text) and validate it against ``dims``."""
        if isinstance(spec, SubnetConfig):
            return spec.validate(dims)
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise ConfigError(f"config is not valid JSON: {err}") from None
        if not isinstance(spec, Mapping):
            raise ConfigError(f"config must be a JSON object with keys {list(USER_KEYS)}, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(USER_KEYS))
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown}; allowed keys are {list(USER_KEYS)}")

        layers_spec = spec.get("layers", dims.num_layers)
        if isinstance(layers_spec, list):
            layers = tuple(_int("layers", v) for v in layers_spec)
        else:
            layers = depth_map_for(dims, _int("layers", layers_spec))
        n = len(layers)
        heads = _per_layer("heads", spec.get("heads", dims.num_heads), n)
        ffn = _per_layer("ffn", spec.get("ffn", dims.ffn), n)
        hidden = _int("hidden", spec.get("hidden", dims.hidden))
        return cls(layers, heads, ffn, hidden).validate(dims)

    def validate(self, dims: ModelDims) -> SubnetConfig:
        """Raise ConfigError naming the field and the allowed values unless this config fits ``dims``."""
        last = dims.num_layers - 1
        if any(not 0 <= i <= last for i in self.layers):
            raise ConfigError(f"layers: indices {list(self.layers)} out of range; allowed 0..{last}")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ConfigError(f"layers: indices {list(self.layers)} must be strictly increasing")
        for h in self.heads:
            if not 1 <= h <= dims.num_heads or h % dims.group_size:
                allowed = list(range(dims.group_size, dims.num_heads + 1, dims.group_size))
                why = f" (whole groups of {dims.group_size} query heads per key/value head)" if dims.group_size > 1 else ""
                raise ConfigError(f"heads: {h} is not allowed; allowed {_ranges(allowed)}{why}")
        for f in self.ffn:
            if not 1 <= f <= dims.ffn:
                raise ConfigError(f"ffn: {f} is out of range; allowed 1..{dims.ffn}")
        if not 1 <= self.hidden <= dims.hidden:
            raise ConfigError(f"hidden: {self.hidden} is out of range; allowed 1..{dims.hidden}")
        return self

    # ----- identity -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical form: explicit kept layers and per-layer lists."""
        return {"layers": list(self.layers), "heads": list(self.heads), "ffn": list(self.ffn), "hidden": self.hidden}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetConfig:
        """Inverse of ``to_dict`` (canonical form only; use ``parse`` for user input)."""
        missing = [k for k in USER_KEYS if k not in data]
        if missing or any(not isinstance(data[k], list) for k in ("layers", "heads", "ffn")):
            raise ConfigError(f"not a canonical subnet config (explicit lists for layers/heads/ffn): {dict(data)}")
        ints = {k: tuple(_int(k, v) for v in data[k]) for k in ("layers", "heads", "ffn")}
        return cls(ints["layers"], ints["heads"], ints["ffn"], _int("hidden", data["hidden"]))

    @functools.cached_property
    def key(self) -> str:
        """Stable, filesystem-safe identity of this config (same config, same key, on every machine)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        """Short human label, e.g. ``L3[1,3,5] H6 F768 D384``."""

        def one(values: tuple[int, ...]) -> str:
            return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))

        kept = ",".join(map(str, self.layers))
        return f"L{len(self.layers)}[{kept}] H{one(self.heads)} F{one(self.ffn)} D{self.hidden}"

    @property
    def is_uniform(self) -> bool:
        return len(set(self.heads)) == 1 and len(set(self.ffn)) == 1

    # ----- size without building ----------------------------------------------------------------------------
    def param_count(self, dims: ModelDims) -> ParamCount:
        return _param_count(self, dims)

    def weight_bytes(self, dims: ModelDims, precision: str = "fp32") -> int:
        if precision not in BYTES_PER_PARAM:
            raise ConfigError(f"precision: {precision!r} is not one of {list(BYTES_PER_PARAM)}")
        return self.param_count(dims).total * BYTES_PER_PARAM[precision]


def _int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}: expected an integer, got {value!r}")
    return value


def _per_layer(field: str, value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) != n:
            raise ConfigError(f"{field}: the list has {len(value)} values but {n} layers are kept; give one per kept layer or a single number")
        return tuple(_int(field, v) for v in value)
    return (_int(field, value),) * n


def _ranges(values: list[int]) -> str:
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1, values[1] - values[0])):
        step = values[1] - values[0]
        return f"{values[0]}..{values[-1]}" + (f" in steps of {step}" if step > 1 else "")
    return str(values)
