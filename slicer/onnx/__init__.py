"""Artifacts: the direct graph builder, ONNX export (the reference), validation against PyTorch, quantisation."""
