"""Torch -> ONNX/TorchScript export: backbones, heads, bundle writer."""
