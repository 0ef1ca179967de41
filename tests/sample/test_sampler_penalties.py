import math

import pytest
import torch

from vllm.sample import Sampler
from vllm.sample.sampler import apply_logits_processors
from vllm.sampling_params import SamplingParams

VOCAB = 10
PROMPTS = [[1, 2, 2], [4], [0, 9]]
OUTPUTS = [[2, 3, 3, 3], [5, 5], []]


def _reference_repetition(row_logits, penalty, seen):
    values = row_logits.tolist()
    for token in set(seen):
        value = values[token]
        values[token] = value / penalty if value > 0 else value * penalty
    return values


def _reference_frequency_presence(row_logits, frequency, presence, output):
    values = row_logits.tolist()
    for token in set(output):
        values[token] -= frequency * output.count(token) + presence
    return values


def _processed(build_metadata, logits, params):
    metadata = build_metadata(params, VOCAB, prompts=PROMPTS, outputs=OUTPUTS)
    return apply_logits_processors(logits, metadata)


def test_repetition_penalty_scales_prompt_and_output_tokens(build_metadata):
    logits = torch.randn(3, VOCAB) * 2  # (B, V)
    penalties = [1.5, 0.5, 1.0]
    params = [SamplingParams(repetition_penalty=p) for p in penalties]
    processed = _processed(build_metadata, logits, params)
    for row, penalty in enumerate(penalties):
        seen = PROMPTS[row] + OUTPUTS[row]
        expected = _reference_repetition(logits[row], penalty, seen)
        torch.testing.assert_close(processed[row], torch.tensor(expected))


@pytest.mark.parametrize("frequency, presence", [(0.5, 0.0), (0.0, 1.5), (-0.7, 0.3)])
def test_frequency_and_presence_penalties_count_output_tokens_only(
    build_metadata, frequency, presence
):
    logits = torch.randn(3, VOCAB)  # (B, V)
    params = [SamplingParams(frequency_penalty=frequency, presence_penalty=presence)] * 3
    processed = _processed(build_metadata, logits, params)
    for row in range(3):
        expected = _reference_frequency_presence(logits[row], frequency, presence, OUTPUTS[row])
        torch.testing.assert_close(processed[row], torch.tensor(expected))


def test_all_penalties_together_in_vllm_order(build_metadata):
    logits = torch.randn(3, VOCAB)  # (B, V)
    params = [SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4,
                             presence_penalty=0.2)] * 3
    processed = _processed(build_metadata, logits, params)
    for row in range(3):
        repeated = _reference_repetition(logits[row], 1.3, PROMPTS[row] + OUTPUTS[row])
        expected = _reference_frequency_presence(
            torch.tensor(repeated), 0.4, 0.2, OUTPUTS[row]
        )
        torch.testing.assert_close(processed[row], torch.tensor(expected))


def test_penalties_change_the_greedy_choice(build_metadata):
    logits = torch.zeros(1, VOCAB)  # (B, V)
    logits[0, 3] = 1.0
    logits[0, 6] = 0.9
    params = [SamplingParams(temperature=0.0, presence_penalty=0.5)]
    metadata = build_metadata(params, VOCAB, outputs=[[3]])
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [6]


def test_logit_bias_is_added_to_its_row_only(build_metadata):
    logits = torch.randn(2, VOCAB)  # (B, V)
    params = [SamplingParams(logit_bias={1: 2.5, 8: -100}), SamplingParams()]
    processed = apply_logits_processors(logits, build_metadata(params, VOCAB))
    expected = logits[0].tolist()
    expected[1] += 2.5
    expected[8] -= 100
    torch.testing.assert_close(processed[0], torch.tensor(expected))
    torch.testing.assert_close(processed[1], logits[1])


EOS = 0


def _eos_favoured_logits(num_rows):
    logits = torch.zeros(num_rows, VOCAB)  # (B, V)
    logits[:, EOS] = 10.0
    logits[:, 7] = 5.0
    return logits


@pytest.mark.parametrize("num_generated, blocked", [(0, True), (2, True), (3, False), (4, False)])
def test_min_tokens_blocks_eos_until_reached(build_metadata, num_generated, blocked):
    params = [SamplingParams(temperature=0.0, min_tokens=3)]
    metadata = build_metadata(params, VOCAB, outputs=[[5] * num_generated], eos=EOS)
    sampled = Sampler()(_eos_favoured_logits(1), metadata).sampled_token_ids
    assert sampled.tolist() == ([7] if blocked else [EOS])


def test_min_tokens_blocks_stop_token_ids_and_respects_ignore_eos(build_metadata):
    params = [
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7]),
        SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True),
        SamplingParams(temperature=0.0),
    ]
    metadata = build_metadata(params, VOCAB, eos=EOS)
    processed = apply_logits_processors(_eos_favoured_logits(3), metadata)
    assert math.isinf(processed[0, EOS]) and math.isinf(processed[0, 7])
    assert processed[1, EOS] == 10.0
    assert processed[2, EOS] == 10.0 and processed[2, 7] == 5.0
    sampled = Sampler()(_eos_favoured_logits(3), metadata).sampled_token_ids
    assert sampled.tolist() == [1, EOS, EOS]


def test_min_tokens_blocks_every_eos_id(build_metadata):
    params = [SamplingParams(temperature=0.0, min_tokens=1)]
    logits = _eos_favoured_logits(1)
    logits[0, 7] = 20.0  # the second eos id is the top token, EOS the next
    metadata = build_metadata(params, VOCAB, eos=(EOS, 7))
    processed = apply_logits_processors(logits, metadata)
    assert math.isinf(processed[0, EOS]) and math.isinf(processed[0, 7])
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() not in ([EOS], [7])
