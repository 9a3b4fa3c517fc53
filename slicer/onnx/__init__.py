"""Artifacts: ONNX export, validation against PyTorch, quantisation."""
