"""Benchmarks behind `vllm bench ...`."""
