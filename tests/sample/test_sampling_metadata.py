import math

import pytest
import torch

from vllm.sample import SamplingMetadata
from vllm.sampling_params import SamplingParams

VOCAB = 16


def test_plain_batches_carry_no_optional_tensors(build_metadata):
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7)]
    metadata = build_metadata(params, VOCAB, prompts=[[1, 2], [3]], outputs=[[4], []], eos=0)
    optional = [
        "top_p", "top_k", "min_p", "repetition_penalties", "seen_token_mask",
        "frequency_penalties", "presence_penalties", "output_token_counts",
        "min_tokens_edits", "logit_bias_edits", "max_num_logprobs", "seeds", "is_seeded",
    ]
    assert all(getattr(metadata, name) is None for name in optional)
    assert metadata.temperature.tolist() == pytest.approx([1.0, 0.7])
    assert metadata.is_greedy.tolist() == [True, False]
    assert not metadata.all_greedy and not metadata.all_random


def test_flags_for_uniform_batches(build_metadata):
    greedy = build_metadata([SamplingParams(temperature=0.0)] * 2, VOCAB)
    random = build_metadata([SamplingParams()] * 2, VOCAB)
    assert greedy.all_greedy and not greedy.all_random
    assert random.all_random and not random.all_greedy


def test_filter_tensors_use_neutral_values_for_other_rows(build_metadata):
    params = [SamplingParams(top_k=4), SamplingParams(top_p=0.5), SamplingParams(top_k=99)]
    metadata = build_metadata(params, VOCAB)
    assert metadata.top_k.tolist() == [4, VOCAB, VOCAB]
    assert metadata.top_p.tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert metadata.min_p is None


def test_token_counts_and_seen_mask(build_metadata):
    params = [SamplingParams(repetition_penalty=1.2, frequency_penalty=0.1)] * 2
    metadata = build_metadata(params, VOCAB, prompts=[[1, 1], [2]], outputs=[[3, 3, 1], []])
    expected_counts = torch.zeros(2, VOCAB, dtype=torch.int32)  # (B, V)
    expected_counts[0, 3], expected_counts[0, 1] = 2, 1
    assert torch.equal(metadata.output_token_counts, expected_counts)
    seen = metadata.seen_token_mask.nonzero().tolist()
    assert seen == [[0, 1], [0, 3], [1, 2]]


def test_min_tokens_edits_only_for_short_rows(build_metadata):
    params = [SamplingParams(min_tokens=2, stop_token_ids=[5, 99]), SamplingParams(min_tokens=1)]
    metadata = build_metadata(params, VOCAB, outputs=[[7], [7]], eos=0)
    edits = metadata.min_tokens_edits
    assert list(zip(edits.rows.tolist(), edits.cols.tolist())) == [(0, 0), (0, 5)]
    assert all(math.isinf(v) and v < 0 for v in edits.values.tolist())


def test_max_num_logprobs_is_the_largest_request(build_metadata):
    params = [SamplingParams(logprobs=2), SamplingParams(), SamplingParams(logprobs=0)]
    assert build_metadata(params, VOCAB).max_num_logprobs == 2


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        SamplingMetadata.build([SamplingParams()], [[1]], [], VOCAB, ())


def test_seeds_and_positions_per_row(build_metadata):
    params = [SamplingParams(seed=9), SamplingParams(), SamplingParams(temperature=0.0, seed=4),
              SamplingParams(seed=-3)]
    metadata = build_metadata(params, VOCAB, outputs=[[1, 2], [], [3], [4, 5, 6]])
    assert metadata.positions.tolist() == [2, 0, 1, 3]
    assert metadata.is_seeded.tolist() == [True, False, False, True]  # greedy ignores its seed
    assert metadata.seeds.tolist() == [9, 0, 0, -3]


def test_no_seed_tensors_without_seeded_rows(build_metadata):
    metadata = build_metadata([SamplingParams(), SamplingParams(temperature=0.0)], VOCAB)
    assert metadata.seeds is None and metadata.is_seeded is None
    assert metadata.positions.tolist() == [0, 0]


def test_logit_bias_outside_the_vocabulary_is_rejected(build_metadata):
    with pytest.raises(ValueError, match="logit_bias token id 16"):
        build_metadata([SamplingParams(logit_bias={16: 1.0})], VOCAB)
