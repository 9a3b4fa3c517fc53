"""``build_model``: the one place that knows which class serves which family (kept out of model.py, which
the family classes import)."""

from __future__ import annotations

import torch

from ..spec.dims import ModelDims
from ..spec.subnet_config import SubnetConfig
from ..spec.vocab import ENCODER
from .decoder import Decoder
from .encoder import Encoder
from .model import SlicedTransformer


def build_model(dims: ModelDims, cfg: SubnetConfig | None = None, device: str | torch.device | None = None) -> SlicedTransformer:
    """A model of ``dims``' family at ``cfg`` (default: maximal), randomly initialised."""
    cls = Encoder if dims.family == ENCODER else Decoder
    with torch.device(device or "cpu"):
        return cls(dims, cfg or SubnetConfig.maximal(dims))
