"""KV transfer over a per-pair process group, as the push connector does it: a producer
process sends one request's KV layer by layer (6-int64 header, then a (planes, n, units,
size) payload) to a consumer process, which scatters it into a paged cache.

    python benchmarks/benchmark_kv_transfer.py [--tokens 128 512 1024] [--repeats 5]
    python benchmarks/benchmark_kv_transfer.py --model /tmp/deepseek-random  # MLA latents
    python benchmarks/benchmark_kv_transfer.py --deepseek-r1 --bytes-only

Prints the bytes per token the transfer plan moves for each decode TP size (an MLA model's
latent against the same heads' keys and values cached as MHA), then per-request transfer
time and bandwidth of one producer rank to one consumer rank. The defaults are the demo
model's layout (30 layers, 3 KV heads of 64, float32).
"""
import argparse
import multiprocessing as mp
import statistics
import time
from datetime import timedelta
from typing import NamedTuple

import torch

from vllm import kv_shape
from vllm.attention.backend import AttentionBackend
from vllm.distributed.head_split import check_head_split
from vllm.distributed.kv_transfer.cache_io import CacheIO
from vllm.distributed.kv_transfer.pair_group import (CONSUMER, PRODUCER, PairGroups, PairKey,
                                                     host_store)
from vllm.distributed.kv_transfer.plan import transfer_plan, values_moved_per_token
from vllm.distributed.kv_transfer.push.worker import HEADER_LEN, token_slots

BLOCK_SIZE = 16
ELEMENT_BYTES = 4  # float32, what the CPU platform caches
DECODE_TP_SIZES = (1, 2, 4, 8)


class Layout(NamedTuple):
    num_layers: int
    units: kv_shape.CacheUnits
    mha_elements: int  # per layer and token: the same heads' keys and values (MLA), or 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--model", help="a Hugging Face folder: its own layout (MLA too)")
    parser.add_argument("--deepseek-r1", action="store_true",
                        help="DeepSeek-R1's layout (transformers' DeepseekV3Config defaults)")
    parser.add_argument("--bytes-only", action="store_true", help="skip the timed transfer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=29871)
    return parser.parse_args()


def layout_of(args) -> Layout:
    if args.model or args.deepseek_r1:
        if args.deepseek_r1:
            from transformers import DeepseekV3Config
            config = DeepseekV3Config()
        else:
            from transformers import AutoConfig
            config = AutoConfig.from_pretrained(args.model)
        mla = kv_shape.is_mla(config)
        return Layout(config.num_hidden_layers, kv_shape.cache_units(config),
                      kv_shape.expanded_elements_per_token(config) if mla else 0)
    units = kv_shape.CacheUnits(kv_shape.PER_HEAD, args.kv_heads, args.head_size)
    return Layout(args.layers, units, 0)


def bytes_per_token(layout: Layout, decode_tp: int) -> int:
    """What the plan moves per token, all layers, from one producer rank's view of the
    whole model into decode_tp consumer ranks."""
    plan = transfer_plan(1, decode_tp, layout.units)
    return layout.num_layers * values_moved_per_token(plan, layout.units) * ELEMENT_BYTES


def report_bytes(layout: Layout) -> None:
    units = layout.units
    print(f"KV layout: {layout.num_layers} layers, {units.kind}: {units.planes} plane(s) x "
          f"{units.count} unit(s) x {units.size} values, float32")
    print("decode_tp  moved_bytes_per_token" + ("  mha_equivalent  ratio"
                                                if layout.mha_elements else ""))
    for tp in filter(lambda tp: _splits(units, tp), DECODE_TP_SIZES):
        moved = bytes_per_token(layout, tp)
        line = f"{tp:9d}  {moved:21,d}"
        if layout.mha_elements:
            mha = layout.num_layers * layout.mha_elements * ELEMENT_BYTES  # split by head
            line += f"  {mha:14,d}  {mha / moved:5.1f}x"
        print(line)


def _splits(units: kv_shape.CacheUnits, tp: int) -> bool:
    """Whether decode_tp ranks can hold these units (the latent: any number of them)."""
    if units.replicated:
        return True
    try:
        check_head_split(tp, units.count, units.count)
    except ValueError:
        return False
    return True


def _cache(layout: Layout, num_tokens: int) -> torch.Tensor:
    num_blocks = -(-num_tokens // BLOCK_SIZE) + 1
    units = layout.units
    if units.kind == kv_shape.LATENT:
        shape = AttentionBackend.get_mla_cache_shape(num_blocks, BLOCK_SIZE, units.size)
    else:
        shape = AttentionBackend.get_kv_cache_shape(num_blocks, BLOCK_SIZE, units.count,
                                                    units.size)
    return torch.randn(shape)


def _slots(num_tokens: int) -> torch.Tensor:
    return token_slots(list(range(-(-num_tokens // BLOCK_SIZE))), 0, num_tokens, BLOCK_SIZE)


def _group(args, role: int):
    groups = PairGroups({PRODUCER: timedelta(seconds=60), CONSUMER: timedelta(seconds=60)})
    key = PairKey("bench-p", "0", 0, "bench-d", "0", 0)
    return groups.get(key, f"127.0.0.1:{args.port}", role)


def _producer(args, layout: Layout) -> None:
    torch.set_num_threads(1)
    io = CacheIO(AttentionBackend, layout.units)
    group = _group(args, PRODUCER)
    for num_tokens in args.tokens:
        caches = [_cache(layout, num_tokens) for _ in range(layout.num_layers)]
        slots = _slots(num_tokens)
        for _ in range(args.repeats + 1):  # one warm-up round
            for layer, cache in enumerate(caches):
                header = torch.tensor([0, layer, 0, num_tokens, 0, layout.units.count])
                group.send([header], CONSUMER, 0).wait()
                group.send([io.gather(cache, slots)], CONSUMER, 0).wait()


def _consumer(args, layout: Layout, results) -> None:
    torch.set_num_threads(1)
    store = host_store(f"127.0.0.1:{args.port}", timedelta(seconds=60))  # noqa: F841
    io = CacheIO(AttentionBackend, layout.units)
    group = _group(args, CONSUMER)
    for num_tokens in args.tokens:
        cache = _cache(layout, num_tokens)
        slots = _slots(num_tokens)
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            for _ in range(layout.num_layers):
                header = torch.empty(HEADER_LEN, dtype=torch.int64)
                group.recv([header], PRODUCER, 0).wait()
                payload = io.empty_payload(num_tokens, layout.units.count, cache)
                group.recv([payload], PRODUCER, 0).wait()
                io.scatter(cache, slots, 0, payload)
            times.append(time.perf_counter() - start)
        results[num_tokens] = statistics.median(times[1:])


def report_transfer(args, layout: Layout) -> None:
    context = mp.get_context("spawn")
    results = context.Manager().dict()
    consumer = context.Process(target=_consumer, args=(args, layout, results))
    consumer.start()
    time.sleep(1.0)  # the consumer hosts the store
    producer = context.Process(target=_producer, args=(args, layout))
    producer.start()
    producer.join()
    consumer.join()
    per_token = bytes_per_token(layout, 1)
    print("one producer rank -> one consumer rank")
    print("tokens  transfer_ms  MB/s")
    for num_tokens in args.tokens:
        seconds = results[num_tokens]
        megabytes = num_tokens * per_token / 1e6
        print(f"{num_tokens:6d}  {seconds * 1e3:11.1f}  {megabytes / seconds:6.0f}")


def main() -> None:
    args = _parse()
    layout = layout_of(args)
    report_bytes(layout)
    if not args.bytes_only:
        report_transfer(args, layout)


if __name__ == "__main__":
    main()
