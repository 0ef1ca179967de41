"""KV transfer over a per-pair process group, as the push connector does it: a producer
process sends one request's KV layer by layer (6-int64 header, then (2, n, KVH, D)
payload) to a consumer process, which scatters it into a paged cache.

    python benchmarks/benchmark_kv_transfer.py [--tokens 128 512 1024] [--repeats 5]

Prints bytes per token for the model's layout, per-request transfer time and bandwidth.
The defaults are the demo model's layout (30 layers, 3 KV heads of 64, float32).
"""
import argparse
import multiprocessing as mp
import statistics
import time
from datetime import timedelta

import torch

from vllm.attention.backend import AttentionBackend
from vllm.distributed.kv_transfer.pair_group import (CONSUMER, PRODUCER, PairGroups, PairKey,
                                                     host_store)
from vllm.distributed.kv_transfer.push.worker import HEADER_LEN, token_slots

BLOCK_SIZE = 16


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=29871)
    return parser.parse_args()


def _cache(args, num_tokens: int) -> torch.Tensor:
    num_blocks = -(-num_tokens // BLOCK_SIZE) + 1
    return torch.randn(2, num_blocks, BLOCK_SIZE, args.kv_heads, args.head_size)


def _group(args, role: int):
    groups = PairGroups({PRODUCER: timedelta(seconds=60), CONSUMER: timedelta(seconds=60)})
    key = PairKey("bench-p", "0", 0, "bench-d", "0", 0)
    return groups.get(key, f"127.0.0.1:{args.port}", role)


def _producer(args) -> None:
    torch.set_num_threads(1)
    group = _group(args, PRODUCER)
    for num_tokens in args.tokens:
        caches = [_cache(args, num_tokens) for _ in range(args.layers)]
        slots = token_slots(list(range(caches[0].shape[1])), 0, num_tokens, BLOCK_SIZE)
        for _ in range(args.repeats + 1):  # one warm-up round
            for layer, cache in enumerate(caches):
                header = torch.tensor([0, layer, 0, num_tokens, 0, args.kv_heads])
                group.send([header], CONSUMER, 0).wait()
                group.send([AttentionBackend.gather_kv(cache, slots)], CONSUMER, 0).wait()


def _consumer(args, results) -> None:
    torch.set_num_threads(1)
    store = host_store(f"127.0.0.1:{args.port}", timedelta(seconds=60))  # noqa: F841
    group = _group(args, CONSUMER)
    for num_tokens in args.tokens:
        cache = _cache(args, num_tokens)
        slots = token_slots(list(range(cache.shape[1])), 0, num_tokens, BLOCK_SIZE)
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            for _ in range(args.layers):
                header = torch.empty(HEADER_LEN, dtype=torch.int64)
                group.recv([header], PRODUCER, 0).wait()
                payload = torch.empty(2, num_tokens, args.kv_heads, args.head_size)
                group.recv([payload], PRODUCER, 0).wait()
                AttentionBackend.scatter_kv(cache, slots, 0, payload)
            times.append(time.perf_counter() - start)
        results[num_tokens] = statistics.median(times[1:])


def main() -> None:
    args = _parse()
    bytes_per_token = 2 * args.layers * args.kv_heads * args.head_size * 4
    context = mp.get_context("spawn")
    results = context.Manager().dict()
    consumer = context.Process(target=_consumer, args=(args, results))
    consumer.start()
    time.sleep(1.0)  # the consumer hosts the store
    producer = context.Process(target=_producer, args=(args,))
    producer.start()
    producer.join()
    consumer.join()
    print(f"KV bytes per token: {bytes_per_token} ({args.layers} layers x 2 x "
          f"{args.kv_heads} heads x {args.head_size} x 4 bytes)")
    print("tokens  transfer_ms  MB/s")
    for num_tokens in args.tokens:
        seconds = results[num_tokens]
        megabytes = num_tokens * bytes_per_token / 1e6
        print(f"{num_tokens:6d}  {seconds * 1e3:11.1f}  {megabytes / seconds:6.0f}")


if __name__ == "__main__":
    main()
