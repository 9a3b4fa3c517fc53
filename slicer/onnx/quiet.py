"""Build-time log noise that says nothing about our graphs, silenced at its source.

* torch's ONNX exporter warns once per torchvision operator it cannot register when torchvision is not
  installed (``torchvision::nms`` and three more): we export no vision operators, so torchvision is not a
  dependency and the warnings are dropped (logger ``torch.onnx._internal.exporter._registration``).
* onnxruntime's ``quantize_dynamic`` logs "Please consider to run pre-processing before quantization" on the root
  logger for every model. Its pre-processing (symbolic shape inference, graph optimisation) is for static
  quantisation of vision models; dynamic int8 of our MatMul weights gains nothing from it, and every int8 build
  is checked against the fp32 graph on real inputs anyway. Only that one message is filtered.
"""

from __future__ import annotations

import logging

_TORCHVISION_LOGGER = "torch.onnx._internal.exporter._registration"
_ORT_PREPROCESS = "Please consider to run pre-processing before quantization"


class _DropOrtPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _ORT_PREPROCESS not in str(record.msg)


_FILTER = _DropOrtPreprocessHint()


def quiet_build_logs() -> None:
    """Idempotent; called before every build."""
    logging.getLogger(_TORCHVISION_LOGGER).setLevel(logging.ERROR)
    root = logging.getLogger()  # onnxruntime logs it with logging.warning(), i.e. on the root logger itself
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)
