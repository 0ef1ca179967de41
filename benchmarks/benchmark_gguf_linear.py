"""Every linear layer of a decode step: the GGUF-block kernel against the float32 GEMM.

Loads the demo model (or `--model`, a converted GGUF folder or a .gguf file), then for
each batch size times one pass over all the layers that hold GGUF blocks (30 x qkv, o,
gate_up, down and the LM head for the demo model) both ways, on the same inputs.
Example:

    python benchmarks/benchmark_gguf_linear.py --num-tokens 1 8 16 64 128
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from vllm.demo_model import demo_model_path
from vllm.model_executor.model_loader import get_model
from vllm.transformers_utils.config import get_hf_config
from vllm.transformers_utils.gguf_cache import resolve_model_source


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the demo model")
    parser.add_argument("--num-tokens", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if args.iters < 1 or min(args.num_tokens) < 1:
        parser.error("--iters and --num-tokens must be >= 1")
    return args


def packed_layers(model) -> list:
    return [m for m in model.modules() if getattr(m, "packed", None) is not None]


def time_pass(layers, inputs, use_kernel: bool, iters: int) -> float:
    def one_pass():
        for layer, x in zip(layers, inputs):
            if use_kernel:
                layer.packed(x, None)
            else:
                F.linear(x, layer.weight)
    one_pass()
    start = time.perf_counter()
    for _ in range(iters):
        one_pass()
    return (time.perf_counter() - start) / iters


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = resolve_model_source(args.model or demo_model_path())
    model = get_model(folder, get_hf_config(folder), torch.float32, "cpu")
    layers = packed_layers(model)
    if not layers:
        raise SystemExit(f"no layer of {folder} holds GGUF blocks (is vllm._C_<isa> built, "
                         "VLLM_CPU_GGUF_KERNELS unset, the model a Q4_1 / Q8_0 GGUF?)")
    weight_bytes = sum(layer.weight.numel() * 4 for layer in layers)
    block_bytes = sum(layer.packed.matrix.blocks.numel() for layer in layers)
    print(f"{len(layers)} layers: {weight_bytes / 1e6:.0f} MB float32, "
          f"{block_bytes / 1e6:.0f} MB GGUF blocks, {torch.get_num_threads()} threads")
    print(f"{'tokens':>6} {'float32 ms':>11} {'blocks ms':>10} {'speed-up':>9}")
    rows = []
    with torch.inference_mode():
        for tokens in args.num_tokens:
            inputs = [torch.randn(tokens, layer.weight.shape[1]) for layer in layers]
            dense = time_pass(layers, inputs, False, args.iters)
            blocks = time_pass(layers, inputs, True, args.iters)
            rows.append({"num_tokens": tokens, "float32_ms": dense * 1e3,
                         "blocks_ms": blocks * 1e3, "speedup": dense / blocks})
            print(f"{tokens:>6} {dense * 1e3:>11.1f} {blocks * 1e3:>10.1f} "
                  f"{dense / blocks:>8.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
