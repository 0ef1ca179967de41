"""Per-step time of a FusedMoE layer against a dense MLP with the same active parameters.

The MoE layer (the gate's matmul, routing and the routed experts, DeepSeek-V3 style:
sigmoid scores, noaux_tc over groups) has `--experts` experts of intermediate size
`--intermediate`, `--top-k` of them per token; the dense MLP has one gate/up/down of
intermediate size top_k x intermediate, the parameters one token touches. A step runs
`--layers` layers of each kind with their own weights, so that, as in a model, the dense
weights do not stay in the last-level cache between steps. Each batch size reports the
fastest of `--iters` steps (the machine may be shared) in ms per layer, the ratio MoE /
dense, and how many experts the batch woke in the first layer. The experts' matmuls take
the platform's small-batch kernel where it has one (`--expert-gemm`: MKL's GEMM always,
as the dense MLP); `--fixed-order` times both on the platform's batch-invariant kernel
instead (VLLM_BATCH_INVARIANT's path). Example:

    python benchmarks/benchmark_moe.py --experts 16 64 --num-tokens 1 8 64 512
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.machine_limits import fastest_seconds  # noqa: E402

from vllm.model_executor.layers.activation import SiluAndMul  # noqa: E402
from vllm.model_executor.layers.fused_moe import FusedMoE, route  # noqa: E402
from vllm.model_executor.layers.fused_moe.experts import gemm_into  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--experts", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--num-tokens", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--layers", type=int, default=8,
                        help="layers per step, each with its own weights (8 dense layers "
                             "of the default shape, 75 MB, outgrow a 32 MB L3)")
    parser.add_argument("--fixed-order", action="store_true")
    parser.add_argument("--expert-gemm", action="store_true",
                        help="experts on the GEMM even where the platform has a faster "
                             "small-batch kernel")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if min(args.iters, args.layers, *args.num_tokens) < 1 or min(args.experts) < args.top_k:
        parser.error("--iters, --layers and --num-tokens must be >= 1, --experts >= --top-k")
    return args


def groups_for(num_experts: int) -> tuple[int, int]:
    """(n_group, topk_group) in DeepSeek-V3's proportions (8 groups, 4 kept) where they fit."""
    groups = 8 if num_experts % 8 == 0 and num_experts >= 16 else 1
    return groups, max(groups // 2, 1)


def make_moe(args, num_experts: int, generator: torch.Generator):
    groups, kept = groups_for(num_experts)
    layer = FusedMoE(num_experts, args.top_k, args.hidden, args.intermediate,
                     scoring_func="sigmoid", renormalize=True, topk_method="noaux_tc",
                     num_expert_group=groups, topk_group=kept, has_score_correction_bias=True,
                     routed_scaling_factor=2.5)
    for param in layer.parameters():
        param.data.copy_(0.05 * torch.randn(param.shape, generator=generator))
    gate = 0.05 * torch.randn(num_experts, args.hidden, generator=generator)  # (E, H)
    return layer, gate


def make_dense(args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    active = args.top_k * args.intermediate
    w13 = 0.05 * torch.randn(2 * active, args.hidden, generator=generator)  # (2 kI, H)
    w2 = 0.05 * torch.randn(args.hidden, active, generator=generator)  # (H, kI)
    return w13, w2


def linear_through(kernel):
    """x, weight -> x weight^T: MKL's GEMM (F.linear), or the fixed-order `kernel`."""
    if kernel is None:
        return F.linear

    def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(x.shape[0], weight.shape[0])  # (T, out_features)
        kernel(out, x.contiguous(), weight, None)
        return out
    return linear


def measure(args, num_experts: int, kernel) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    moes = [make_moe(args, num_experts, generator) for _ in range(args.layers)]
    denses = [make_dense(args, generator) for _ in range(args.layers)]
    for layer, _ in moes:
        if kernel is not None:
            layer.use_fixed_order_kernel(kernel)
        elif args.expert_gemm:
            layer.matmul_into = gemm_into
    linear = linear_through(kernel)
    silu_and_mul = SiluAndMul()

    def moe_pass():
        for layer, gate in moes:
            layer(x, linear(x, gate))

    def dense_pass():
        for w13, w2 in denses:
            linear(silu_and_mul(linear(x, w13)), w2)

    rows = []
    for num_tokens in args.num_tokens:
        x = torch.randn(num_tokens, args.hidden, generator=generator)  # (T, H)
        moe_ms = fastest_seconds(moe_pass, args.iters) * 1e3 / args.layers
        dense_ms = fastest_seconds(dense_pass, args.iters) * 1e3 / args.layers
        rows.append(dict(experts=num_experts, tokens=num_tokens, moe_ms=moe_ms,
                         dense_ms=dense_ms, ratio=moe_ms / dense_ms,
                         experts_woken=experts_woken(*moes[0], x)))
    return rows


def experts_woken(layer: FusedMoE, gate: torch.Tensor, x: torch.Tensor) -> int:
    _, ids = route(layer.routing, F.linear(x, gate), layer.e_score_correction_bias)
    return int(ids.unique().numel())


def mode_name(args) -> str:
    if args.fixed_order:
        return "both on the fixed-order kernel"
    experts = "GEMM" if args.expert_gemm else "the platform's small-batch kernel"
    return f"dense on the GEMM, experts on {experts}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel = current_platform.batch_invariant_linear(torch.float32) if args.fixed_order else None
    print(f"hidden {args.hidden}, expert intermediate {args.intermediate}, top-k {args.top_k}; "
          f"dense intermediate {args.top_k * args.intermediate}; {torch.get_num_threads()} "
          f"threads; {mode_name(args)}")
    print(f"{'experts':>7} {'tokens':>6} {'woken':>5} {'moe ms':>8} {'dense ms':>8} {'ratio':>6}")
    rows = []
    with torch.inference_mode():
        for num_experts in args.experts:
            for row in measure(args, num_experts, kernel):
                rows.append(row)
                print(f"{row['experts']:>7} {row['tokens']:>6} {row['experts_woken']:>5} "
                      f"{row['moe_ms']:>8.3f} {row['dense_ms']:>8.3f} {row['ratio']:>6.2f}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
