"""Exported models: writing ONNX and TorchScript files, and running them to check them against PyTorch."""
