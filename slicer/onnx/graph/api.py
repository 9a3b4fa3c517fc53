"""Entry points of the direct graph builder: interface names, building, and writing a graph to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ExportError
from ...spec.dims import ModelDims
from ...spec.shapes import parameter_shapes
from ...spec.subnet_config import SubnetConfig
from ...spec.vocab import GRAPH_MODES
from .decoder import build_decoder
from .encoder import ENCODER_FUSION, EncoderFusion, build_encoder
from .ops import GraphWriter


def graph_names(dims: ModelDims, cfg: SubnetConfig) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order (the interface every artifact of the family has)."""
    if dims.family == "encoder":
        return ["input_ids", "attention_mask", "token_type_ids"], ["embeddings"] + (["logits"] if dims.num_labels else [])
    n = len(cfg.layers)
    past = [f"past.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def check_weights(dims: ModelDims, cfg: SubnetConfig, weights: dict[str, np.ndarray]) -> None:
    """The weights are exactly the subnet's tensors (slicer/shapes.py), finite: anything else is a caller's bug."""
    expected = parameter_shapes(dims, cfg)
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise ExportError(f"graph builder: weights do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ExportError(f"graph builder: {name} has shape {tuple(weights[name].shape)}, the config needs {shape}")
        if not np.isfinite(weights[name]).all():
            raise ExportError(f"graph builder: {name} holds non-finite values")


def build_graph(dims: ModelDims, cfg: SubnetConfig, weights: dict[str, np.ndarray], mode: str = "fused",
                encoder_fusion: EncoderFusion | None = None) -> GraphWriter:
    """The subnet's ONNX graph from its sliced, merged weights (names as in slicer/shapes.py).

    ``encoder_fusion`` overrides ``mode``'s preset for encoders (benchmarks compare the combinations; artifacts are
    built from the presets, which their recipe names). ``.write(path)`` streams the graph to a file, ``.model()``
    gives the ``onnx.ModelProto``."""
    if mode not in GRAPH_MODES:
        raise ExportError(f"graph mode: {mode!r} is not one of {list(GRAPH_MODES)}")
    check_weights(dims, cfg, weights)
    g = GraphWriter()
    if dims.family == "encoder":
        build_encoder(g, dims, cfg, weights, encoder_fusion or ENCODER_FUSION[mode])
    else:
        build_decoder(g, dims, cfg, weights, fused=mode == "fused")
    return g


def write_graph(dims: ModelDims, cfg: SubnetConfig, weights: dict[str, np.ndarray], path: Path,
                mode: str = "fused") -> dict[str, Any]:
    """Build the subnet's graph and stream it into ``path`` (one self-contained file, fsynced); its sha256 and size."""
    return build_graph(dims, cfg, weights, mode).write(Path(path), f"MLFS subnet {cfg.describe()} ({dims.family}, {mode})")
