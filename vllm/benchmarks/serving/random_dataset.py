"""The "random" dataset: prompts of random vocabulary tokens with target lengths."""
import math
from dataclasses import dataclass

import numpy as np

from vllm.benchmarks.serving.tokenizer import count_tokens

MAX_FIT_ROUNDS = 10


@dataclass
class SampleRequest:
    """One prompt to send, with its measured and requested lengths."""
    prompt: str
    prompt_len: int
    expected_output_len: int


def sample_random_requests(tokenizer, num_requests: int, input_len: int, output_len: int,
                           range_ratio: float = 0.0, prefix_len: int = 0,
                           seed: int = 0) -> list[SampleRequest]:
    """Random prompts whose lengths are uniform in [len*(1-r), len*(1+r)], plus a shared prefix."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    rng = np.random.default_rng(seed)
    vocabulary = _ordinary_token_ids(tokenizer)
    input_lens = _uniform_lengths(rng, input_len, range_ratio, num_requests, minimum=0)
    output_lens = _uniform_lengths(rng, output_len, range_ratio, num_requests, minimum=1)
    prefix = rng.choice(vocabulary, size=prefix_len).tolist()
    requests = []
    for own_len, out_len in zip(input_lens, output_lens):
        target = max(prefix_len + int(own_len), 1)
        token_ids = prefix + rng.choice(vocabulary, size=target - prefix_len).tolist()
        prompt = _fit_prompt(tokenizer, token_ids, target, vocabulary, rng)
        requests.append(SampleRequest(prompt, count_tokens(tokenizer, prompt), int(out_len)))
    return requests


def _ordinary_token_ids(tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(tokenizer.vocab_size) if i not in special])


def _uniform_lengths(rng: np.random.Generator, length: int, ratio: float, count: int,
                     minimum: int) -> np.ndarray:
    low = max(math.floor(length * (1 - ratio)), minimum)
    high = max(math.floor(length * (1 + ratio)), low)
    return rng.integers(low, high + 1, size=count)


def _fit_prompt(tokenizer, token_ids: list[int], target: int, vocabulary: np.ndarray,
                rng: np.random.Generator) -> str:
    """Decode token_ids, then trim or pad until the text re-encodes to `target` tokens."""
    text = tokenizer.decode(token_ids)
    for _ in range(MAX_FIT_ROUNDS):
        token_ids = tokenizer.encode(text, add_special_tokens=False)
        if len(token_ids) == target:
            break
        if len(token_ids) > target:
            token_ids = token_ids[:target]
        else:
            token_ids += rng.choice(vocabulary, size=target - len(token_ids)).tolist()
        text = tokenizer.decode(token_ids)
    return text
