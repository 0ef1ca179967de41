"""Paged decode attention per kernel build and dtype: ms per call and GB/s of KV read.

One decode step of one attention layer shaped like the demo model (SmolLM2-135M: 9 query
heads, 3 kv heads, head size 64, block size 16), for every batch size x context length;
each sequence's blocks are scattered through the cache as a busy allocator leaves them.
GB/s counts the keys and values the call must read (batch x context x kv heads x head
size x 2 x element size), printed beside the machine's measured limits
(benchmarks/machine_limits.py) to show how close each build gets to memory bandwidth.
A cache that fits in the last-level cache reads faster than DRAM; --layers N rotates
through N caches, as a model's layers do, to push the working set out of it.

    python benchmarks/benchmark_paged_attention.py
    python benchmarks/benchmark_paged_attention.py --isa avx2 --dtype bfloat16 --layers 8
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.machine_limits import describe, measured_limits  # noqa: E402
from vllm.platforms import cpu_isa  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", nargs="+", default=None, help="default: every build")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context-lens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--num-heads", type=int, default=9)
    parser.add_argument("--num-kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=1,
                        help="independent caches called in turn (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of timed calls per case (default 0.3)")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or min(args.context_lens) < 1 or args.layers < 1:
        parser.error("--batch-sizes, --context-lens and --layers must be >= 1")
    if args.num_heads % args.num_kv_heads:
        parser.error("--num-heads must be a multiple of --num-kv-heads")
    return args


def make_layer(args, batch: int, context: int, dtype: torch.dtype, gen) -> tuple:
    """(query, key_cache, value_cache, block_table, seq_lens) of one layer's decode step."""
    blocks_per_seq = -(-context // args.block_size)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, args.block_size, args.num_kv_heads, args.head_size)
    key_cache = torch.randn(shape, generator=gen).to(dtype)
    value_cache = torch.randn(shape, generator=gen).to(dtype)
    block_table = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    block_table = block_table.view(batch, blocks_per_seq)  # scattered blocks
    seq_lens = torch.full((batch,), context, dtype=torch.int32)
    query = torch.randn(batch, args.num_heads, args.head_size, generator=gen).to(dtype)
    return query, key_cache, value_cache, block_table, seq_lens


def time_calls(op, layers, scale: float, min_time: float) -> float:
    """Median seconds per call over rounds of one call per layer, after a warm-up round."""
    outs = [torch.empty_like(layer[0]) for layer in layers]

    def one_round():
        for out, layer in zip(outs, layers):
            op(out, *layer, scale)

    one_round()
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or (time.perf_counter() - start < min_time and len(samples) < 1000):
        began = time.perf_counter()
        one_round()
        samples.append((time.perf_counter() - began) / len(layers))
    samples.sort()
    return samples[len(samples) // 2]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    isas = args.isa or cpu_isa.built_isas()
    ops = {isa: cpu_isa.load_ops(isa) for isa in isas}
    missing = [isa for isa, namespace in ops.items() if namespace is None]
    if missing:
        raise SystemExit(f"not built: {', '.join(missing)} (setup.py build_ext --inplace)")
    limits = measured_limits(isas)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(describe(limits))
    print(f"heads {args.num_heads}/{args.num_kv_heads}, head size {args.head_size}, "
          f"block size {args.block_size}, {args.layers} layer cache(s)")
    print(f"{'isa':>8} {'dtype':>8} {'batch':>5} {'context':>7} {'KV MiB':>7} "
          f"{'ms':>8} {'GB/s':>7} {'of read':>7}")
    scale = args.head_size**-0.5
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for dtype_name in args.dtype:
            dtype = DTYPES[dtype_name]
            for batch in args.batch_sizes:
                for context in args.context_lens:
                    layers = [make_layer(args, batch, context, dtype, gen)
                              for _ in range(args.layers)]
                    kv_bytes = (2 * batch * context * args.num_kv_heads * args.head_size
                                * layers[0][1].element_size())
                    for isa in isas:
                        seconds = time_calls(ops[isa].paged_attention_decode, layers, scale,
                                             args.min_time)
                        gb_s = kv_bytes / seconds / 1e9
                        row = {"isa": isa, "dtype": dtype_name, "batch": batch,
                               "context": context, "kv_bytes": kv_bytes,
                               "ms": seconds * 1e3, "gb_s": gb_s,
                               "fraction_of_read": gb_s / limits["read_gb_s"]}
                        rows.append(row)
                        print(f"{isa:>8} {dtype_name:>8} {batch:>5} {context:>7} "
                              f"{kv_bytes / 2**20:>7.1f} {seconds * 1e3:>8.3f} "
                              f"{gb_s:>7.1f} {row['fraction_of_read']:>6.0%}", flush=True)
                    del layers
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump({"limits": limits, "config": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
