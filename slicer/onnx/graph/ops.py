"""GraphWriter: the few graph-building verbs both families share (linear, norms, activations, reshapes).

One writer builds one graph: it names every value, keeps initializers and small constants (deduplicated), and
finally either wraps everything in an ``onnx.ModelProto`` or streams it to a file (``write``: the weights go
from their numpy buffers straight to disk, no protobuf copies, which is most of a build's graph time). Plain mode
uses standard opset-18 operators only; nodes in the ``com.microsoft`` domain are onnxruntime contrib operators
(fused mode).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
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
        self.initializers: list[tuple[str, np.ndarray]] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.uses_contrib = False
        self.doc = ""  # the model's doc_string

    # ----- values ---------------------------------------------------------------------------------------------
    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float32 initializer (copied into the graph, contiguous)."""
        self.initializers.append((name, np.ascontiguousarray(array, dtype="<f4")))
        return name

    def const(self, values: Any, dtype: type = np.int64, shape: tuple[int, ...] | None = None) -> str:
        """A small constant (shape vector, axis list, scalar); equal constants share one initializer."""
        array = np.asarray(values, dtype=dtype)
        if shape is not None:
            array = array.reshape(shape)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self._name("const")
            self.initializers.append((name, array))
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
           name: str | None = None, **attrs: Any) -> str | list[str]:
        """Add one node (named ``name``, else after its first output); returns its output name(s)."""
        names = [out] if out is not None else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name or names[0], domain=domain or None, **attrs))
        if domain == MS:
            self.uses_contrib = True
        return names[0] if outputs == 1 else names

    # ----- layers ---------------------------------------------------------------------------------------------
    def linear(self, x: str, weight: str | np.ndarray, bias: str | np.ndarray | None = None, name: str = "") -> str:
        """``x @ W.T + b`` as PyTorch's Linear; numpy weights (out, in) are stored transposed, (in, out).

        The MatMul node is named ``{name}.matmul`` (quantisation excludes layers by node name)."""
        if isinstance(weight, np.ndarray):
            weight = self.weight(f"{name}.weight_t", weight.T)
        y = self.op("MatMul", [x, weight], name=f"{name}.matmul" if name else None)
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
    def model(self, doc: str = "", weights: bool = True) -> onnx.ModelProto:
        """The whole model in memory (``weights=False``: without initializers, the skeleton ``write`` streams)."""
        inits = [numpy_helper.from_array(a, n) for n, a in self.initializers] if weights else []
        graph = helper.make_graph(self.nodes, "mlfs_subnet", self.inputs, self.outputs, inits)
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS, 1)] if self.uses_contrib else [])
        model = helper.make_model(graph, opset_imports=opsets, producer_name="mlfs-direct", doc_string=doc or self.doc)
        model.ir_version = 10  # what today's exporter writes; onnxruntime 1.30+ reads it
        return model

    def in_memory(self, doc: str = "") -> tuple[bytes, dict[str, np.ndarray]]:
        """The model for an onnxruntime session without serialising its weights: the skeleton's bytes, with every
        float initializer declared as external data, and those arrays by name (the very buffers ``write`` streams to
        the file; ``validate.session`` hands them to onnxruntime without a copy). Integer constants stay inline:
        shape inference reads them."""
        model = self.model(doc, weights=False)
        external = {}
        for name, array in self.initializers:
            if array.dtype != np.float32 or array.size < _EXTERNAL_MIN:
                model.graph.initializer.append(numpy_helper.from_array(array, name))
                continue
            tensor = model.graph.initializer.add(name=name, data_type=FLOAT, dims=array.shape,
                                                 data_location=TensorProto.EXTERNAL)
            tensor.external_data.add(key="location", value="in-memory")  # supplied by the session's caller
            external[name] = array
        return model.SerializeToString(), external

    def write(self, path: Path, doc: str = "") -> dict[str, Any]:
        """Stream the model into one self-contained file, flushed to disk; returns its sha256 and size.

        Protobuf merges repeated occurrences of a message field, so the file is the serialised skeleton followed
        by one ``ModelProto.graph`` fragment per initializer, whose raw data is written from the array's own buffer.
        The file is hashed as it is written, so nobody reads it back to hash it.
        """
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as f:

            def put(data: bytes | memoryview) -> None:
                nonlocal size
                f.write(data)
                digest.update(data)
                size += len(data)

            put(self.model(doc, weights=False).SerializeToString())
            for name, array in self.initializers:
                head = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                        dims=array.shape).SerializeToString()
                raw = _len_field(_RAW_DATA, array.nbytes)
                tensor = len(head) + len(raw) + array.nbytes
                init = _len_field(_INITIALIZER, tensor)
                put(_len_field(_GRAPH, len(init) + tensor) + init + head + raw)
                put(memoryview(np.ascontiguousarray(array)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        return {"sha256": digest.hexdigest(), "size": size}


_EXTERNAL_MIN = 1024  # float initializers of at least this many elements go to onnxruntime as external buffers
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def _len_field(number: int, length: int) -> bytes:
    """A length-delimited protobuf field's tag and length, before its payload."""
    out = bytearray()
    for value in (number << 3 | 2, length):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)
