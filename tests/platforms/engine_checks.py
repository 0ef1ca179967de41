"""Running prompts through EngineCores, and comparing greedy tokens across dtypes.

bfloat16 (what the NPU ops take) and float32 (what the CPU backend takes) round differently,
so two correct engines may part ways where the reference's top two tokens are nearly tied.
Tokens must be equal up to the first such tie; a split anywhere else fails the test."""
import os
import random
import sys

from vllm.sampling_params import SamplingParams

KVT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "distributed", "kv_transfer")
if KVT_DIR not in sys.path:
    sys.path.insert(0, KVT_DIR)

from kvt_harness import (Collected, consumer_request, drive, idle, kv_port_of,  # noqa: E402
                         plain_request, producer_request, unique_id)

NEAR_TIE_NATS = 0.1  # logprob gap between the reference's best two tokens
GREEDY = SamplingParams(temperature=0, max_tokens=10, logprobs=2, ignore_eos=True)


def random_prompts(lengths: list[int], vocab: int = 512, seed: int = 0,
                   shared_prefix: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(shared_prefix)]
    return [prefix + [rng.randrange(3, vocab) for _ in range(n - shared_prefix)]
            for n in lengths]


def run_prompts(core, prompts, params: SamplingParams = GREEDY, waves: int = 1):
    """Greedy tokens and per-token top logprobs of each prompt; `waves` > 1 sends the
    prompts in that many consecutive groups (later ones hit the prefix cache)."""
    sink = Collected()
    ids = [unique_id("p") for _ in prompts]
    group = -(-len(prompts) // waves)
    for start in range(0, len(prompts), group):
        for rid, prompt in zip(ids[start:start + group], prompts[start:start + group]):
            core.add_request(plain_request(core, rid, prompt, params))
        drive({core: sink}, lambda: not core.has_unfinished_requests())
    logprobs = {rid: [entry for out in sink.outputs[rid] for entry in (out.new_logprobs or [])]
                for rid in ids}
    return [sink.tokens[rid] for rid in ids], [logprobs[rid] for rid in ids]


def top2_gap(entry) -> float:
    token_ids, logprobs, _ = entry
    ranked = sorted(logprobs[1:], reverse=True)  # the top-k after the sampled token
    return ranked[0] - ranked[1] if len(ranked) > 1 else float("inf")


def assert_same_greedy(got: list[list[int]], want: list[list[int]], want_logprobs,
                       min_compared: float = 0.5) -> None:
    """The near-tie rule: each prompt's tokens equal the reference's up to its first split,
    which must fall where the reference's top two tokens are within NEAR_TIE_NATS. So that
    the rule is not met vacuously, at least `min_compared` of all tokens must lie before a
    split. (Counting prompts that match in full instead depends on the CPU: bfloat16
    products differ between AVX-512-BF16 and other machines, and a random tiny model has
    many near-ties.)"""
    compared = total = 0
    for i, (have, expect, entries) in enumerate(zip(got, want, want_logprobs)):
        assert len(have) == len(expect), f"prompt {i}: {len(have)} vs {len(expect)} tokens"
        split = next((t for t, (a, b) in enumerate(zip(have, expect)) if a != b), None)
        total += len(expect)
        compared += len(expect) if split is None else split + 1
        if split is None:
            continue
        gap = top2_gap(entries[split])
        assert gap < NEAR_TIE_NATS, (f"prompt {i} differs at token {split} where the "
                                     f"reference is sure (top-2 gap {gap:.3f}): {have} vs "
                                     f"{expect}")
    assert compared >= min_compared * total, (f"only {compared} of {total} tokens lie before "
                                              "a near-tie split")


def run_1p1d(pd, prompts) -> tuple[list[str], Collected]:
    """Each prompt through pd.producer into pd.consumer; the request ids and what the
    consumer produced."""
    ids = [unique_id("pd") for _ in prompts]
    consumed = Collected()
    for rid, prompt in zip(ids, prompts):
        pd.producer.add_request(producer_request(pd.producer, rid, prompt))
        pd.consumer.add_request(consumer_request(pd.consumer, rid, prompt, GREEDY,
                                                 kv_port_of(pd.producer)))
    drive({pd.producer: Collected(), pd.consumer: consumed},
          lambda: idle(pd.producer, pd.consumer))
    return ids, consumed
