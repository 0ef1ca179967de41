"""Batched sampling tensors for one engine step."""

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from vllm.sample.logit_edits import LogitEdits
from vllm.sample.token_counts import count_tokens
from vllm.sampling_params import SamplingParams, SamplingType


@dataclass
class SamplingMetadata:
    """What the sampler needs for one step; fields no row uses are None.

    Row i of every tensor belongs to ``params[i]`` of :meth:`build`.
    """

    temperature: torch.Tensor  # (B,) float32, 1.0 on greedy rows
    is_greedy: torch.Tensor  # (B,) bool
    all_greedy: bool
    all_random: bool
    positions: torch.Tensor  # (B,) int64, output tokens so far: the index of this draw
    top_p: torch.Tensor | None = None  # (B,) float32, 1.0 where disabled
    top_k: torch.Tensor | None = None  # (B,) int64, vocab_size where disabled
    min_p: torch.Tensor | None = None  # (B,) float32
    seeds: torch.Tensor | None = None  # (B,) int64, the request's seed, 0 on unseeded rows
    is_seeded: torch.Tensor | None = None  # (B,) bool
    repetition_penalties: torch.Tensor | None = None  # (B,) float32
    seen_token_mask: torch.Tensor | None = None  # (B, V) bool, in prompt or output
    frequency_penalties: torch.Tensor | None = None  # (B,) float32
    presence_penalties: torch.Tensor | None = None  # (B,) float32
    output_token_counts: torch.Tensor | None = None  # (B, V) int32
    min_tokens_edits: LogitEdits | None = None  # -inf on stop tokens of short rows
    logit_bias_edits: LogitEdits | None = None
    max_num_logprobs: int | None = None

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        vocab_size: int,
        eos_token_ids: Sequence[int],
    ) -> "SamplingMetadata":
        """Batch the rows' parameters; a seeded row draws at position len(output_token_ids[i])."""
        _check_batch(params, prompt_token_ids, output_token_ids)
        greedy = [p.sampling_type == SamplingType.GREEDY for p in params]
        temperatures = [1.0 if g else p.temperature for g, p in zip(greedy, params)]
        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=torch.tensor(temperatures, dtype=torch.float32),  # (B,)
            is_greedy=torch.tensor(greedy, dtype=torch.bool),  # (B,)
            all_greedy=all(greedy),
            all_random=not any(greedy),
            positions=torch.tensor([len(o) for o in output_token_ids], dtype=torch.int64),  # (B,)
            **_seed_fields(params),
            **_filter_fields(params, vocab_size),
            **_penalty_fields(params, prompt_token_ids, output_token_ids, vocab_size),
            min_tokens_edits=_min_tokens_edits(params, output_token_ids, vocab_size,
                                               eos_token_ids),
            logit_bias_edits=_logit_bias_edits(params, vocab_size),
            max_num_logprobs=max(logprobs) if logprobs else None,
        )


def _check_batch(
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
) -> None:
    if not len(params) == len(prompt_token_ids) == len(output_token_ids):
        raise ValueError(
            f"params, prompt_token_ids and output_token_ids must have the same length, got "
            f"{len(params)}, {len(prompt_token_ids)} and {len(output_token_ids)}."
        )


def _optional_tensor(
    values: list[Any], disabled: Any, dtype: torch.dtype
) -> torch.Tensor | None:
    if all(value == disabled for value in values):
        return None
    return torch.tensor(values, dtype=dtype)  # (B,)


def _seed_fields(params: Sequence[SamplingParams]) -> dict[str, Any]:
    seeded = [p.sampling_type == SamplingType.RANDOM_SEED for p in params]
    if not any(seeded):
        return {}
    return dict(
        seeds=torch.tensor([p.seed if s else 0 for s, p in zip(seeded, params)],
                           dtype=torch.int64),  # (B,)
        is_seeded=torch.tensor(seeded, dtype=torch.bool),  # (B,)
    )


def _filter_fields(params: Sequence[SamplingParams], vocab_size: int) -> dict[str, Any]:
    top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
    return dict(
        top_p=_optional_tensor([p.top_p for p in params], 1.0, torch.float32),
        top_k=_optional_tensor(top_k, vocab_size, torch.int64),
        min_p=_optional_tensor([p.min_p for p in params], 0.0, torch.float32),
    )


def _penalty_fields(
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    vocab_size: int,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    repetition = [p.repetition_penalty for p in params]
    if any(value != 1.0 for value in repetition):
        seen = [list(p) + list(o) for p, o in zip(prompt_token_ids, output_token_ids)]
        fields["repetition_penalties"] = torch.tensor(repetition, dtype=torch.float32)  # (B,)
        fields["seen_token_mask"] = count_tokens(seen, vocab_size) > 0  # (B, V)
    frequency = [p.frequency_penalty for p in params]
    presence = [p.presence_penalty for p in params]
    if any(value != 0.0 for value in frequency + presence):
        fields["frequency_penalties"] = torch.tensor(frequency, dtype=torch.float32)  # (B,)
        fields["presence_penalties"] = torch.tensor(presence, dtype=torch.float32)  # (B,)
        fields["output_token_counts"] = count_tokens(output_token_ids, vocab_size)  # (B, V)
    return fields


def _min_tokens_edits(
    params: Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]],
    vocab_size: int,
    eos_token_ids: Sequence[int],
) -> LogitEdits | None:
    entries = []
    for row, (p, output) in enumerate(zip(params, output_token_ids)):
        if len(output) >= p.min_tokens:
            continue
        stop_ids = p.all_stop_token_ids
        if not p.ignore_eos:
            stop_ids.update(eos_token_ids)
        # ids outside the vocabulary can never be sampled, so need no blocking
        entries += [(row, i, float("-inf")) for i in sorted(stop_ids) if i < vocab_size]
    return LogitEdits.from_entries(entries)


def _logit_bias_edits(params: Sequence[SamplingParams], vocab_size: int) -> LogitEdits | None:
    entries = []
    for row, p in enumerate(params):
        for token_id, bias in (p.logit_bias or {}).items():
            if token_id >= vocab_size:
                raise ValueError(
                    f"logit_bias token id {token_id} is outside the vocabulary "
                    f"(size {vocab_size})."
                )
            entries.append((row, token_id, bias))
    return LogitEdits.from_entries(entries)
