"""Every linear layer of a decode step: the GGUF-block kernel against the float32 GEMM.

Loads the demo model (or `--model`, a converted GGUF folder or a .gguf file), then for
each batch size times one pass over all the layers that hold GGUF blocks (30 x qkv, o,
gate_up, down and the LM head for the demo model) each way, on the same inputs: MKL's
float32 GEMM (F.linear), the GGUF-block kernel (gguf_linear) and, with `--kernels ...
dense`, the row-invariant float32 kernel (dense_linear), with `... panels` the packed
float32 GEMM (panel_linear, whatever its token window). Each is reported in ms, in GB/s
of weights read (float32 or blocks, once per pass) and in GFLOP/s, beside this machine's
read bandwidth and FMA peak (benchmarks/machine_limits.py). Examples:

    python benchmarks/benchmark_gguf_linear.py --num-tokens 1 8 16 64 128
    python benchmarks/benchmark_gguf_linear.py --kernels gemm dense --num-tokens 1 8 64 256 2048
    python benchmarks/benchmark_gguf_linear.py --kernels gemm blocks panels --num-tokens 1 4 8 16 64 256 1024
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.machine_limits import describe, fastest_seconds, measured_limits  # noqa: E402

from vllm.demo_model import demo_model_path  # noqa: E402
from vllm.model_executor.model_loader import get_model  # noqa: E402
from vllm.platforms import cpu_isa  # noqa: E402
from vllm.transformers_utils.config import get_hf_config  # noqa: E402
from vllm.transformers_utils.gguf_cache import resolve_model_source  # noqa: E402

KERNELS = ("gemm", "blocks", "dense", "panels")


def parse_args(argv=None, kernels=KERNELS, default_kernels=("gemm", "blocks"),
               default_tokens=(1, 8, 16, 32, 64, 128), description=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the demo model")
    parser.add_argument("--num-tokens", type=int, nargs="+", default=list(default_tokens))
    parser.add_argument("--kernels", nargs="+", choices=kernels, default=list(default_kernels))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if args.iters < 1 or min(args.num_tokens) < 1:
        parser.error("--iters and --num-tokens must be >= 1")
    return args


def load_block_layers(model_arg) -> tuple:
    """(folder, the layers holding GGUF blocks) of `model_arg` or the demo model, float32."""
    folder = resolve_model_source(model_arg or demo_model_path())
    model = get_model(folder, get_hf_config(folder), torch.float32, "cpu")
    return folder, packed_layers(model)


def packed_layers(model) -> list:
    return [m for m in model.modules() if getattr(m, "packed", None) is not None]


def layer_call(kernel: str, ops):
    """layer, x -> x W^T through `kernel`."""
    if kernel == "gemm":
        return lambda layer, x: F.linear(x, layer.weight)
    if kernel == "blocks":
        return lambda layer, x: layer.packed(x, None)
    if kernel == "panels":
        return lambda layer, x: layer.weight.panels(x, None)

    def dense(layer, x):
        out = x.new_empty(x.shape[0], layer.weight.shape[0])  # (tokens, output rows)
        ops.dense_linear(out, x, layer.weight, None)
        return out
    return dense


def time_pass(layers, inputs, call, iters: int) -> float:
    """Seconds of the fastest of `iters` passes over every layer, after one warm-up pass
    (the fastest: on a shared machine the others measure its other tenants too)."""
    def one_pass():
        for layer, x in zip(layers, inputs):
            call(layer, x)
    return fastest_seconds(one_pass, iters)


def peaks(limits: dict, isa: str) -> dict:
    """FMA peak each kernel is held to: the selected build's for ours, the best build's
    for MKL (which picks its own code path)."""
    best = max(limits["fma_gflop_s"].values())
    own = limits["fma_gflop_s"][isa]
    return {"gemm": best, "blocks": own, "dense": own, "panels": own}


def main(argv=None) -> None:
    args = parse_args(argv)
    folder, layers = load_block_layers(args.model)
    if not layers:
        raise SystemExit(f"no layer of {folder} holds GGUF blocks (is vllm._C_<isa> built, "
                         "VLLM_CPU_GGUF_KERNELS unset, the model a Q4_1 / Q8_0 GGUF?)")
    isa = cpu_isa.selected_isa()
    limits = measured_limits(list(dict.fromkeys([isa] + cpu_isa.built_isas()[:1])))
    weight_bytes = sum(layer.weight.numel() * 4 for layer in layers)
    block_bytes = sum(layer.packed.matrix.blocks.numel() for layer in layers)
    flops_per_token = sum(2 * layer.weight.numel() for layer in layers)
    read = {"gemm": weight_bytes, "blocks": block_bytes, "dense": weight_bytes,
            "panels": weight_bytes}
    peak = peaks(limits, isa)
    print(f"{len(layers)} layers: {weight_bytes / 1e6:.0f} MB float32, "
          f"{block_bytes / 1e6:.0f} MB GGUF blocks, kernels {isa}")
    print(describe(limits))
    print(f"{'tokens':>6}" + "".join(f" | {k + ' ms':>10} {'GB/s':>5} {'%read':>5} "
                                      f"{'GFLOP/s':>7} {'%peak':>5}" for k in args.kernels))
    rows = []
    with torch.inference_mode():
        for tokens in args.num_tokens:
            inputs = [torch.randn(tokens, layer.weight.shape[1]) for layer in layers]
            row = {"num_tokens": tokens, "isa": isa}
            line = f"{tokens:>6}"
            for kernel in args.kernels:
                seconds = time_pass(layers, inputs, layer_call(kernel, cpu_isa.kernel_ops()),
                                    args.iters)
                gb_s = read[kernel] / seconds / 1e9
                gflop_s = flops_per_token * tokens / seconds / 1e9
                row.update({f"{kernel}_ms": seconds * 1e3, f"{kernel}_gb_s": gb_s,
                            f"{kernel}_gflop_s": gflop_s})
                line += (f" | {seconds * 1e3:>10.1f} {gb_s:>5.1f} "
                         f"{100 * gb_s / limits['read_gb_s']:>4.0f}% {gflop_s:>7.1f} "
                         f"{100 * gflop_s / peak[kernel]:>4.0f}%")
            rows.append(row)
            print(line, flush=True)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump({"limits": limits, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
