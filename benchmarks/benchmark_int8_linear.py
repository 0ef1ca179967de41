"""Every linear layer of a decode step in W8A8_DYNAMIC: the int8 kernel against the GGUF
blocks, the float32 GEMM and the panels.

Loads the demo model (or `--model`, a converted GGUF folder or a .gguf file) as
benchmark_gguf_linear.py does, quantises each layer's float32 weight to int8 per output
channel (round to nearest, symmetric) and times one pass over all the layers per batch
size: `int8` (vllm._C's int8_linear after int8_quantize_dynamic, what a W8A8_DYNAMIC layer
runs, activation quantisation included), `gemm` (MKL's float32 F.linear), `blocks` (the
GGUF-block kernel) and `panels` (the packed float32 GEMM). Each is reported in ms and in GB/s
of weights read (int8: one byte per weight). Examples:

    python benchmarks/benchmark_int8_linear.py
    VLLM_CPU_ISA=portable python benchmarks/benchmark_int8_linear.py --kernels int8 blocks
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.benchmark_gguf_linear import (layer_call, load_block_layers,  # noqa: E402
                                              parse_args, time_pass)
from benchmarks.machine_limits import describe, measured_limits  # noqa: E402

from vllm.model_executor.layers.quantization.int8_kernels import Int8Weight  # noqa: E402
from vllm.platforms import cpu_isa  # noqa: E402
from vllm.platforms.cpu_int8 import CpuW8A8Kernels  # noqa: E402

KERNELS = ("int8", "gemm", "blocks", "panels")


def int8_weight(weight: torch.Tensor, kernels: CpuW8A8Kernels) -> Int8Weight:
    """Round-to-nearest symmetric int8 per output channel, packed for the kernel."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (N,)
    qweight = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    quantized = Int8Weight(qweight, scale.float())
    quantized.packed = kernels.pack(quantized)
    return quantized


def calls(kernels: CpuW8A8Kernels, quantized: dict):
    """kernel name -> (layer, x) -> output."""
    ops = cpu_isa.kernel_ops()
    table = {name: layer_call(name, ops) for name in ("gemm", "blocks", "panels")}
    table["int8"] = lambda layer, x: kernels.dynamic_linear(x, quantized[id(layer)], None)
    return table


def main(argv=None) -> None:
    args = parse_args(argv, KERNELS, KERNELS, (1, 8, 16, 64, 256, 1024),
                      __doc__.splitlines()[0])
    folder, layers = load_block_layers(args.model)
    ops = cpu_isa.kernel_ops()
    if not layers or ops is None or not hasattr(ops, "int8_linear"):
        raise SystemExit(f"no GGUF-block layers in {folder} or no int8 kernels (is "
                         "vllm._C_<isa> built, the model a Q4_1 / Q8_0 GGUF?)")
    if "panels" in args.kernels and any(getattr(layer.weight, "panels", None) is None
                                        for layer in layers):
        args.kernels.remove("panels")  # no packed float32 GEMM in this build
    kernels = CpuW8A8Kernels(ops)
    quantized = {id(layer): int8_weight(layer.weight, kernels) for layer in layers}
    isa = cpu_isa.selected_isa()
    limits = measured_limits([isa])
    weights = sum(layer.weight.numel() for layer in layers)
    read = {"int8": weights, "gemm": 4 * weights, "panels": 4 * weights,
            "blocks": sum(layer.packed.matrix.blocks.numel() for layer in layers)}
    print(f"{len(layers)} layers, {weights / 1e6:.0f} M weights; kernels {isa} "
          f"(int8 products: {ops.int8_dot_product()})")
    print(describe(limits))
    print(f"{'tokens':>6}" + "".join(f" | {k + ' ms':>11} {'GB/s':>5}" for k in args.kernels))
    table, rows = calls(kernels, quantized), []
    with torch.inference_mode():
        for tokens in args.num_tokens:
            inputs = [torch.randn(tokens, layer.weight.shape[1]) for layer in layers]
            row, line = {"num_tokens": tokens, "isa": isa}, f"{tokens:>6}"
            for name in args.kernels:
                seconds = time_pass(layers, inputs, table[name], args.iters)
                row[f"{name}_ms"] = seconds * 1e3
                row[f"{name}_gb_s"] = read[name] / seconds / 1e9
                line += f" | {seconds * 1e3:>11.2f} {row[f'{name}_gb_s']:>5.1f}"
            rows.append(row)
            print(line, flush=True)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump({"limits": limits, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
