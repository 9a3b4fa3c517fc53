"""Torch-free ONNX graph builder: writes a subnet's graph straight from its sliced, merged numpy weights.

``build_graph(dims, cfg, weights, mode)`` returns an ``onnx.ModelProto`` with the same interface (names,
dtypes, dynamic axes) as the torch.onnx export of the same subnet. ``mode`` is ``"plain"`` (standard opset-18
operators, any runtime) or ``"fused"`` (onnxruntime's contrib operators where they exist for the layout).
"""

from __future__ import annotations

from .api import GRAPH_MODES, build_graph, graph_names, write_graph
from .encoder import ENCODER_FUSION, EncoderFusion

__all__ = ["ENCODER_FUSION", "GRAPH_MODES", "EncoderFusion", "build_graph", "graph_names", "write_graph"]
