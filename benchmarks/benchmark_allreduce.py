"""Cost of one tensor-parallel all-reduce on a decode step's activations.

Starts `--world-size` local processes joined the way the engine's ranks are (TCP store
rendezvous, the platform's collective backend) and times `--iters` all-reduces of a
(num-tokens, hidden-size) tensor. Example:

    python benchmarks/benchmark_allreduce.py --num-tokens 64 --hidden-size 576
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.multiprocessing as mp

from vllm.distributed.communication_op import tensor_model_parallel_all_reduce
from vllm.distributed.init import (destroy_worker_distributed, init_worker_distributed,
                                   start_rendezvous_store)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--num-tokens", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=576)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    for name in ("world_size", "num_tokens", "hidden_size", "iters", "threads_per_rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def time_all_reduce(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    torch.set_num_threads(args.threads_per_rank)
    init_worker_distributed(rank, args.world_size, "127.0.0.1", port)
    try:
        x = torch.ones(args.num_tokens, args.hidden_size, dtype=DTYPES[args.dtype])  # (T, H)
        for _ in range(args.warmup):
            tensor_model_parallel_all_reduce(x)
        seconds = []
        for _ in range(args.iters):
            start = time.perf_counter()
            tensor_model_parallel_all_reduce(x)
            seconds.append(time.perf_counter() - start)
        if rank == 0:
            queue.put(seconds)
    finally:
        destroy_worker_distributed()


def summarize(seconds: list[float], args: argparse.Namespace) -> dict:
    element_size = torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    micros = sorted(s * 1e6 for s in seconds)
    return {"world_size": args.world_size, "shape": [args.num_tokens, args.hidden_size],
            "dtype": args.dtype, "bytes": args.num_tokens * args.hidden_size * element_size,
            "iters": args.iters, "median_us": statistics.median(micros),
            "p10_us": micros[len(micros) // 10], "p90_us": micros[len(micros) * 9 // 10],
            "mean_us": statistics.fmean(micros), "load_average": os.getloadavg()[0]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    store = start_rendezvous_store("127.0.0.1")
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(time_all_reduce, args=(args, store.port, queue),
                       nprocs=args.world_size, join=True, start_method="spawn")
    result = summarize(queue.get(), args)
    print(f"all-reduce of {tuple(result['shape'])} {args.dtype} ({result['bytes']} bytes) over "
          f"{args.world_size} ranks: median {result['median_us']:.1f} us, "
          f"p10 {result['p10_us']:.1f} us, p90 {result['p90_us']:.1f} us "
          f"(load average {result['load_average']:.2f})")
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
