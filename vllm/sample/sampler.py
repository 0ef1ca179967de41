"""The sampler: logits of one step -> next token ids (and their logprobs)."""

from typing import NamedTuple

import torch

from vllm.sample.exponential_race import exponential_race_sample
from vllm.sample.filters import apply_min_p, apply_top_k_top_p
from vllm.sample.logprobs import LogprobsTensors, gather_logprobs
from vllm.sample.metadata import SamplingMetadata
from vllm.sample.penalties import (
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
)

_FLOAT32_MAX = torch.finfo(torch.float32).max
_INT64 = torch.iinfo(torch.int64)


class SamplerOutput(NamedTuple):
    """One step's sampled tokens, plus logprobs when any row asked for them."""

    sampled_token_ids: torch.Tensor  # (B,) int64
    logprobs: LogprobsTensors | None


class Sampler:
    """Samples one token per row, always inside the vocabulary.

    Logprobs come from the raw logits; then min_tokens blocking, logit bias
    and penalties apply to every row; greedy rows take the argmax; random
    rows go through temperature, min_p, top_k, top_p and an exponential race
    (vllm/sample/exponential_race.py) keyed by the row's seed and position: the
    request's seed when it has one, else a seed drawn from the global torch RNG.
    After the penalties NaN counts as -inf, +inf logits are the row's tied top
    tokens, and a row with every logit -inf takes the argmax of the raw logits.
    """

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        logits = logits.float()  # (B, V)
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
        processed = apply_logits_processors(logits, metadata)  # (B, V)
        sampled = sample(processed, metadata, fallback_logits=logits)  # (B,)
        if raw_logprobs is None:
            return SamplerOutput(sampled, None)
        logprobs = gather_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs)
        return SamplerOutput(sampled, logprobs)


def apply_logits_processors(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """min_tokens blocking, logit bias, then penalties; returns a new tensor."""
    if metadata.min_tokens_edits is not None:
        logits = metadata.min_tokens_edits.apply(logits)  # (B, V)
    if metadata.logit_bias_edits is not None:
        logits = metadata.logit_bias_edits.apply(logits)  # (B, V)
    if metadata.repetition_penalties is not None:
        logits = apply_repetition_penalty(
            logits, metadata.repetition_penalties, metadata.seen_token_mask
        )  # (B, V)
    if metadata.output_token_counts is not None:
        logits = apply_frequency_presence_penalties(
            logits,
            metadata.frequency_penalties,
            metadata.presence_penalties,
            metadata.output_token_counts,
        )  # (B, V)
    return logits


def sample(
    logits: torch.Tensor, metadata: SamplingMetadata, fallback_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy rows take the argmax, random rows sample; returns (B,) int64.

    NaN counts as -inf and +inf logits are the row's tied top tokens; a row with
    no logit above -inf takes the argmax of ``fallback_logits`` (token 0 when None).
    """
    top = logits.amax(dim=-1, keepdim=True)  # (B, 1), NaN when the row has one
    if not torch.isfinite(top).all():
        logits = _repair_rows(logits, fallback_logits)  # (B, V)
        top = logits.amax(dim=-1, keepdim=True)  # (B, 1), finite
    if metadata.all_greedy:
        return logits.argmax(dim=-1)  # (B,)
    sampled = _sample_random(logits, top, metadata)  # (B,)
    if metadata.all_random:
        return sampled
    return torch.where(metadata.is_greedy, logits.argmax(dim=-1), sampled)  # (B,)


def _repair_rows(logits: torch.Tensor, fallback_logits: torch.Tensor | None) -> torch.Tensor:
    """Give every row a finite maximum without changing what it may sample.

    NaN becomes -inf; a row with +inf logits keeps exactly those, tied at 0;
    a row left with only -inf becomes one-hot at the fallback's argmax.
    """
    inf = float("inf")
    logits = logits.nan_to_num(nan=-inf, posinf=inf, neginf=-inf)  # (B, V)
    top = logits.amax(dim=-1, keepdim=True)  # (B, 1)
    tied = torch.full_like(logits, -inf).masked_fill(logits == inf, 0.0)  # (B, V)
    logits = torch.where(top == inf, tied, logits)  # (B, V)
    if fallback_logits is None:
        fallback_logits = logits
    fallback_logits = fallback_logits.nan_to_num(nan=-inf, posinf=inf, neginf=-inf)  # (B, V)
    fallback = fallback_logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    one_hot = torch.full_like(logits, -inf).scatter_(1, fallback, 0.0)  # (B, V)
    return torch.where(top == -inf, one_hot, logits)  # (B, V)


def _sample_random(
    logits: torch.Tensor, top: torch.Tensor, metadata: SamplingMetadata
) -> torch.Tensor:
    logits = _apply_temperature(logits, top, metadata.temperature)  # (B, V), row max 0
    if metadata.min_p is not None:
        logits = apply_min_p(logits, metadata.min_p)  # (B, V)
    if metadata.top_k is not None or metadata.top_p is not None:
        logits = apply_top_k_top_p(logits, metadata.top_k, metadata.top_p)  # (B, V)
    seeds = _row_seeds(metadata).to(logits.device)  # (B,)
    return exponential_race_sample(logits, seeds, metadata.positions.to(logits.device))  # (B,)


def _row_seeds(metadata: SamplingMetadata) -> torch.Tensor:
    """(B,) int64: each seeded row's own seed, a fresh one from the global RNG elsewhere."""
    fresh = torch.randint(_INT64.min, _INT64.max, metadata.is_greedy.shape, dtype=torch.int64)
    if metadata.seeds is None:
        return fresh  # (B,)
    return torch.where(metadata.is_seeded, metadata.seeds, fresh)  # (B,)


def _apply_temperature(
    logits: torch.Tensor, top: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """(logits - top) / temperature: the top token lands on 0, so nothing overflows upwards.

    Halving first keeps logits - top finite when they are ±3e38 (a huge temperature
    can bring such a gap back into range); halving is exact above 1e-38.
    """
    half_temperature = temperature.clamp(max=_FLOAT32_MAX)[:, None] * 0.5  # (B, 1)
    return (logits * 0.5 - top * 0.5) / half_temperature  # (B, V)
