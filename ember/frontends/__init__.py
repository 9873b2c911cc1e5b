"""Frontends turn models into ember graphs: ONNX (`frontends.onnx`) and a Python builder."""
