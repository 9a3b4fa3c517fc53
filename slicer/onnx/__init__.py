"""ONNX artifacts: the direct graph builder, export, validation and quantisation."""
