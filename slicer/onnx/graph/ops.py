"""GraphWriter: the few graph-building verbs both families share (linear, norms, activations, reshapes).

One writer builds one graph: it names every value, keeps initializers and small constants (deduplicated), and
finally wraps everything in an ``onnx.ModelProto``. Plain mode uses standard opset-18 operators only; the
``com.microsoft`` helpers are onnxruntime contrib operators (fused mode).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
MS = "com.microsoft"
FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
MASK_VALUE = float(np.finfo(np.float32).min)  # what PyTorch adds for masked positions (slicer/model.py)


class GraphWriter:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.uses_contrib = False

    # ----- values ---------------------------------------------------------------------------------------------
    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float32 initializer (copied into the graph, contiguous)."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def const(self, values: Any, dtype: type = np.int64, shape: tuple[int, ...] | None = None) -> str:
        """A small constant (shape vector, axis list, scalar); equal constants share one initializer."""
        array = np.asarray(values, dtype=dtype)
        if shape is not None:
            array = array.reshape(shape)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def input(self, name: str, elem_type: int, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, value: str, elem_type: int, shape: list[int | str]) -> None:
        """Declare graph output ``name`` (an Identity names ``value`` unless it already carries the name)."""
        if value != name:
            self.op("Identity", [value], out=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def op(self, op_type: str, inputs: list[str], out: str | None = None, outputs: int = 1, domain: str = "",
           **attrs: Any) -> str | list[str]:
        """Add one node; returns its output name (or names, when ``outputs`` > 1)."""
        names = [out] if out is not None else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain or None, **attrs))
        if domain == MS:
            self.uses_contrib = True
        return names[0] if outputs == 1 else names

    # ----- layers ---------------------------------------------------------------------------------------------
    def linear(self, x: str, weight: str | np.ndarray, bias: str | np.ndarray | None = None, name: str = "") -> str:
        """``x @ W.T + b`` as PyTorch's Linear; numpy weights (out, in) are stored transposed, (in, out)."""
        if isinstance(weight, np.ndarray):
            weight = self.weight(f"{name}.weight_t", weight.T)
        y = self.op("MatMul", [x, weight])
        if bias is None:
            return y
        if isinstance(bias, np.ndarray):
            bias = self.weight(f"{name}.bias", bias)
        return self.op("Add", [y, bias])

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float, name: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{name}.weight", gamma), self.weight(f"{name}.bias", beta)],
                       axis=-1, epsilon=float(eps))

    def rms_norm(self, x: str, gamma: np.ndarray, eps: float, name: str) -> str:
        """Llama's RMSNorm: ``w * x / sqrt(mean(x^2) + eps)`` over the last axis."""
        mean = self.op("ReduceMean", [self.op("Mul", [x, x]), self.const([-1])], keepdims=1)
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [mean, self.const(eps, np.float32)])])])
        return self.op("Mul", [self.op("Mul", [x, inv]), self.weight(f"{name}.weight", gamma)])

    def gelu(self, x: str) -> str:
        """Exact (erf) GELU, as ``torch.nn.functional.gelu``; opset 18 has no Gelu operator."""
        erf = self.op("Erf", [self.op("Mul", [x, self.const(1 / math.sqrt(2), np.float32)])])
        return self.op("Mul", [self.op("Mul", [x, self.const(0.5, np.float32)]), self.op("Add", [erf, self.const(1.0, np.float32)])])

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def reshape(self, x: str, shape: list[int]) -> str:
        """Reshape where 0 copies the input's dimension and -1 is inferred."""
        return self.op("Reshape", [x, self.const(shape)])

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", [x], perm=perm)

    def dim(self, x: str, axis: int) -> str:
        """Dimension ``axis`` of ``x`` as a 1-element int64 vector."""
        return self.op("Shape", [x], start=axis, end=axis + 1)

    def scalar(self, vector: str) -> str:
        return self.op("Squeeze", [vector, self.const([0])])

    # ----- the model --------------------------------------------------------------------------------------------
    def model(self, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "mlfs_subnet", self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS, 1)] if self.uses_contrib else [])
        model = helper.make_model(graph, opset_imports=opsets, producer_name="mlfs-direct", doc_string=doc)
        model.ir_version = 10  # what today's exporter writes; onnxruntime 1.30+ reads it
        return model
