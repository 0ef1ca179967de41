"""The near-tie rule, for comparing two computations that round differently (TP=N against
TP=1, bfloat16 against float32): each prompt's tokens equal the reference's up to their
first split, and the split falls where the reference's choice was nearly tied. A split
anywhere else fails, and so that the rule is not met vacuously, at least `min_compared`
of all tokens must lie before a split.

Nearly tied means, for a greedy row, the two best logprobs within NEAR_TIE_NATS; for a
seeded row, the two tokens' race keys (temperature-scaled logprob plus the row's Gumbel
noise at that position, vllm/sample/exponential_race.py) within NEAR_TIE_NATS.
"""
from types import SimpleNamespace
from typing import Optional

import torch

from vllm.sample.exponential_race import gumbel_noise
from vllm.sampling_params import SamplingParams

NEAR_TIE_NATS = 0.1


def first_split(have: list[int], want: list[int]) -> Optional[int]:
    return next((t for t, (a, b) in enumerate(zip(have, want)) if a != b), None)


def greedy_margin(want_step: dict[int, float]) -> float:
    """The gap between the reference's two best logprobs at the split."""
    best = sorted(want_step.values(), reverse=True)
    return best[0] - best[1] if len(best) > 1 else float("inf")


def seeded_margin(params: SamplingParams, position: int, want_token: int,
                  want_logprob: float, have_token: int, have_logprob: float) -> float:
    """How far apart the two tokens' race keys were at the split (each logprob from the run
    that sampled the token: every run reports its sampled token's logprob)."""
    noise = gumbel_noise(torch.tensor([params.seed]), torch.tensor([position]),
                         max(want_token, have_token) + 1)[0]  # (V',)
    want_key = want_logprob / params.temperature + float(noise[want_token])
    have_key = have_logprob / params.temperature + float(noise[have_token])
    return abs(want_key - have_key)


def split_margin(params: SamplingParams, have, want, split: int) -> float:
    """have / want: CompletionOutput-like (token_ids, logprobs: per-step {token: Logprob})."""
    want_step = {t: lp.logprob for t, lp in want.logprobs[split].items()}
    if params.temperature == 0:
        return greedy_margin(want_step)
    have_step = {t: lp.logprob for t, lp in have.logprobs[split].items()}
    a, b = want.token_ids[split], have.token_ids[split]
    return seeded_margin(params, split, a, want_step[a], b, have_step[b])


def assert_equal_up_to_near_ties(got: list, want: list, params: SamplingParams,
                                 min_compared: float = 0.5) -> None:
    """got / want: CompletionOutputs of the same prompts, sampled with `params` (which must
    ask for logprobs)."""
    compared = total = 0
    for i, (have, expect) in enumerate(zip(got, want)):
        have_ids, want_ids = list(have.token_ids), list(expect.token_ids)
        assert len(have_ids) == len(want_ids), f"prompt {i}: {len(have_ids)} vs {len(want_ids)}"
        split = first_split(have_ids, want_ids)
        total += len(want_ids)
        compared += len(want_ids) if split is None else split + 1
        if split is None:
            continue
        margin = split_margin(params, have, expect, split)
        assert margin < NEAR_TIE_NATS, (f"prompt {i} differs at token {split} where the "
                                        f"reference is sure (margin {margin:.3f} nats): "
                                        f"{have_ids} vs {want_ids}")
    assert compared >= min_compared * total, (f"only {compared} of {total} tokens lie before "
                                              "a near-tie split")


TOKEN_ID_PREFIX = "token_id:"


def from_openai_choice(choice: dict) -> SimpleNamespace:
    """A CompletionOutput-like view of one /v1/completions choice that was asked for
    logprobs with return_tokens_as_token_ids."""
    def token_id(name: str) -> int:
        assert name.startswith(TOKEN_ID_PREFIX), name
        return int(name[len(TOKEN_ID_PREFIX):])
    logprobs = choice["logprobs"]
    steps = [{token_id(name): SimpleNamespace(logprob=value) for name, value in top.items()}
             for top in logprobs["top_logprobs"]]
    return SimpleNamespace(token_ids=[token_id(name) for name in logprobs["tokens"]],
                           logprobs=steps)
