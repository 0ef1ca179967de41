"""Quantized weight formats and their linear kernels."""
