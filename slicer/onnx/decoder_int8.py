"""Decoder int8 (issue 18.6): the options measured on SmolLM2 slices, and why decoders are not offered int8.

``benchmarks/decoder_int8.py`` measures each option of ``DECODER_INT8_OPTIONS`` against the fp32 graph: next-token
argmax agreement on python-code dev blocks and prefill/decode latency in onnxruntime (2 threads). None keeps the
agreement the int8 gate asks for (``quantize.INT8_MIN_AGREEMENT``, 99 %) and is faster (results/decoder-int8*.json,
full SmolLM2, 1,536 predictions; latency ratios are int8 / fp32 time, lower is faster):

- current scheme (dynamic per-channel, reduce_range, FFN down fp32; onnxruntime also quantises the embedding
  Gather per tensor, which the tied LM head reads): 83.2 % agreement, decode 0.76x, prefill 0.54x;
- dynamic per-channel of the layer MatMuls only (embedding and LM head fp32): 59.7 %, decode 0.39x;
- the same with reduce_range and FFN down fp32: 84.2 %, decode 0.81x;
- weight-only int8 (MatMulNBits, blocks of 32, int8 compute): 96.1 %, decode 0.90x, prefill 2.2x;
  blocks of 128: 93.6 %, decode 1.05x;
- weight-only int8 with float32 compute (activations never rounded): 97.5 %, decode 9.1x (blocks of 128: 97.2 %, 4.7x).

A 20-layer slice without trained adapters agrees less still (29-77 %): its next-token distribution is flat. So the
server does not offer int8 for decoders (``int8_unavailable``); ``/v1/models`` shows this reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError
from .quantize import excluded_nodes, quantize_int8

DECODER_INT8_REASON = (
    "int8 is not offered for decoders: no scheme measured on SmolLM2 keeps next-token agreement with fp32 at the "
    "gate's 99 % and runs faster (full model, 1,536 predictions on python-code: current dynamic int8 83 % at 0.76x "
    "the fp32 decode time; per-channel MatMul-only 60-84 %; weight-only MatMulNBits 94-96 % at 0.90-1.05x, 97.5 % "
    "only with float32 compute at 4.7-9x slower); benchmarks/decoder_int8.py")


def int8_unavailable(family: str) -> str | None:
    """Why int8 artifacts are not offered for a model family, or None when they are."""
    return DECODER_INT8_REASON if family == "decoder" else None


def quantize_dynamic_int8(src: Path, dst: Path, keep: tuple[str, ...] = (), op_types: list[str] | None = None,
                          reduce_range: bool = False, scheme: str = "") -> dict[str, Any]:
    """Dynamic per-channel int8 of the MatMuls not in ``keep``; ``op_types`` limits the quantised operator types
    (onnxruntime's default also quantises Gather, i.e. the embedding table, per tensor)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = excluded_nodes(src, keep) if keep else []
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    try:
        quantize_dynamic(proto, str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                         nodes_to_exclude=excluded, op_types_to_quantize=op_types,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as err:  # the quantiser raises many types; all mean "no int8 artifact"
        raise ExportError(f"int8 quantisation failed: {type(err).__name__}: {err}") from err
    return {"scheme": scheme, "kept_fp32_nodes": len(excluded)}


def quantize_weight_only_int8(src: Path, dst: Path, block_size: int = 32, accuracy_level: int = 4) -> dict[str, Any]:
    """Weight-only int8 (onnxruntime ``MatMulNBits``, 8 bits, symmetric blocks of ``block_size``) of every MatMul
    with a constant weight; ``accuracy_level`` 4 lets the CPU kernel compute in int8, 1 in float32. The tied LM
    head (a MatMul on the transposed embedding) and the embedding stay fp32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as err:  # as above
        raise ExportError(f"weight-only int8 quantisation failed: {type(err).__name__}: {err}") from err
    return {"scheme": f"weight-only int8 (MatMulNBits, block {block_size}, accuracy level {accuracy_level})",
            "kept_fp32_nodes": 0}


# name -> quantiser(src, dst) -> {"scheme", ...}
DECODER_INT8_OPTIONS = {
    "current": quantize_int8,
    "matmul-per-channel": lambda s, d: quantize_dynamic_int8(
        s, d, op_types=["MatMul"], scheme="dynamic per-channel int8 of the layer MatMuls (embedding and LM head fp32)"),
    "matmul-per-channel-keep-down": lambda s, d: quantize_dynamic_int8(
        s, d, keep=("ffn.down",), op_types=["MatMul"], reduce_range=True,
        scheme="dynamic per-channel int8, reduce_range, FFN down fp32, embedding and LM head fp32"),
    "weight-only-b32": quantize_weight_only_int8,
    "weight-only-b128": lambda s, d: quantize_weight_only_int8(s, d, block_size=128),
    "weight-only-b32-fp32-compute": lambda s, d: quantize_weight_only_int8(s, d, accuracy_level=1),
    "weight-only-b128-fp32-compute": lambda s, d: quantize_weight_only_int8(s, d, block_size=128, accuracy_level=1),
}
