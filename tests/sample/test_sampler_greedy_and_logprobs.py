import pytest
import torch

from vllm.sample import Sampler
from vllm.sampling_params import SamplingParams

VOCAB = 32


def test_all_greedy_rows_take_the_argmax(build_metadata):
    logits = torch.randn(5, VOCAB)  # (B, V)
    params = [SamplingParams(temperature=0.0) for _ in range(5)]
    out = Sampler()(logits, build_metadata(params, VOCAB))
    expected = [int(torch.argmax(row)) for row in logits]
    assert out.sampled_token_ids.tolist() == expected
    assert out.sampled_token_ids.dtype == torch.int64
    assert out.logprobs is None


def test_greedy_rows_in_a_mixed_batch_take_the_argmax(build_metadata):
    logits = torch.randn(6, VOCAB)  # (B, V)
    params = [SamplingParams(temperature=0.0 if row % 2 else 1.5) for row in range(6)]
    out = Sampler()(logits, build_metadata(params, VOCAB))
    for row in (1, 3, 5):
        assert int(out.sampled_token_ids[row]) == int(torch.argmax(logits[row]))


def test_greedy_does_not_touch_the_input_logits(build_metadata):
    logits = torch.randn(2, VOCAB)  # (B, V)
    before = logits.clone()
    params = [SamplingParams(temperature=0.0, repetition_penalty=2.0, logit_bias={1: 5.0})] * 2
    Sampler()(logits, build_metadata(params, VOCAB, prompts=[[0, 1, 2], [3]]))
    assert torch.equal(logits, before)


def _reference_rank(row_logprobs, token_id):
    return sum(1 for value in row_logprobs.tolist() if value >= row_logprobs[token_id].item())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprobs_match_log_softmax_and_ranks(build_metadata, temperature):
    logits = torch.randn(4, VOCAB) * 3  # (B, V)
    params = [SamplingParams(temperature=temperature, logprobs=k) for k in (0, 1, 5, 3)]
    out = Sampler()(logits, build_metadata(params, VOCAB))
    assert out.logprobs.token_ids.shape == (4, 6)
    for row in range(4):
        reference = torch.log_softmax(logits[row].double(), dim=-1)  # (V,)
        sampled = int(out.sampled_token_ids[row])
        ids = out.logprobs.token_ids[row].tolist()
        assert ids[0] == sampled
        assert ids[1:] == torch.argsort(reference, descending=True)[:5].tolist()
        torch.testing.assert_close(
            out.logprobs.logprobs[row].double(), reference[ids], rtol=0, atol=1e-5
        )
        assert int(out.logprobs.sampled_rank[row]) == _reference_rank(reference, sampled)


def test_logprobs_are_raw_before_penalties_and_bias(build_metadata):
    logits = torch.randn(1, VOCAB)  # (B, V)
    params = [SamplingParams(temperature=0.0, logprobs=2, logit_bias={7: 100.0},
                             repetition_penalty=1.5)]
    out = Sampler()(logits, build_metadata(params, VOCAB, prompts=[[1, 2, 3]]))
    assert int(out.sampled_token_ids[0]) == 7
    reference = torch.log_softmax(logits[0], dim=-1)  # (V,)
    torch.testing.assert_close(out.logprobs.logprobs[0, 0], reference[7])
    assert int(out.logprobs.sampled_rank[0]) == _reference_rank(reference, 7)


def test_sampled_rank_is_one_for_the_greedy_token(build_metadata):
    logits = torch.randn(3, VOCAB)  # (B, V)
    params = [SamplingParams(temperature=0.0, logprobs=1)] * 3
    out = Sampler()(logits, build_metadata(params, VOCAB))
    assert out.logprobs.sampled_rank.tolist() == [1, 1, 1]
    assert torch.equal(out.logprobs.token_ids[:, 0], out.logprobs.token_ids[:, 1])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_random_sampling_follows_the_softmax_distribution(build_metadata, temperature):
    num_samples = 4000
    row_logits = torch.tensor([1.0, 0.0, -0.5, 0.5])  # (V,)
    logits = row_logits.expand(num_samples, 4).clone()  # (B, V)
    params = [SamplingParams(temperature=temperature)] * num_samples
    out = Sampler()(logits, build_metadata(params, 4))
    frequencies = torch.bincount(out.sampled_token_ids, minlength=4).double() / num_samples
    expected = torch.softmax(row_logits.double() / temperature, dim=-1)  # (V,)
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.03)


def test_empty_batch_gives_no_tokens(build_metadata):
    out = Sampler()(torch.zeros(0, VOCAB), build_metadata([], VOCAB))
    assert out.sampled_token_ids.shape == (0,)
