import pytest
import torch

from vllm.sample import Sampler
from vllm.sample.filters import apply_min_p, apply_top_k_top_p
from vllm.sampling_params import SamplingParams

VOCAB = 12
NUM_SAMPLES = 600


def _reference_top_k(row_logits, k):
    order = sorted(range(len(row_logits)), key=lambda i: -row_logits[i])
    return set(order[:k])


def _reference_top_p(row_logits, p, candidates):
    weights = {i: torch.tensor(row_logits[i]).double().exp().item() for i in candidates}
    total = sum(weights.values())
    kept, mass = set(), 0.0
    for token in sorted(candidates, key=lambda i: -row_logits[i]):
        if mass >= p:
            break
        kept.add(token)
        mass += weights[token] / total
    return kept


def _reference_min_p(row_logits, min_p):
    probs = torch.softmax(torch.tensor(row_logits).double(), dim=-1).tolist()
    return {i for i, prob in enumerate(probs) if prob >= min_p * max(probs)}


def _expected_set(row_logits, top_k, top_p, min_p):
    kept = _reference_min_p(row_logits, min_p) if min_p else set(range(len(row_logits)))
    if top_k > 0:
        ranked = {i: row_logits[i] if i in kept else float("-inf") for i in range(VOCAB)}
        kept = kept & _reference_top_k([ranked[i] for i in range(VOCAB)], top_k)
    return _reference_top_p(row_logits, top_p, kept)


def _sample_many(build_metadata, row_logits, params):
    logits = torch.tensor(row_logits).expand(NUM_SAMPLES, VOCAB).clone()  # (B, V)
    metadata = build_metadata([params] * NUM_SAMPLES, VOCAB)
    return set(Sampler()(logits, metadata).sampled_token_ids.tolist())


CASES = [
    dict(top_k=3),
    dict(top_k=1),
    dict(top_p=0.5),
    dict(top_p=0.9),
    dict(min_p=0.2),
    dict(top_k=5, top_p=0.6),
    dict(top_k=6, top_p=0.8, min_p=0.1),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sampling_keeps_exactly_the_filtered_set(build_metadata, case):
    row_logits = (torch.randn(VOCAB) * 0.8).tolist()
    params = SamplingParams(**case)
    expected = _expected_set(row_logits, params.top_k, params.top_p, params.min_p)
    assert 1 <= len(expected) < VOCAB
    assert _sample_many(build_metadata, row_logits, params) == expected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_filter_functions_mask_exactly_the_dropped_tokens(case):
    logits = torch.randn(4, VOCAB)  # (B, V)
    params = SamplingParams(**case)
    filtered = logits
    if params.min_p:
        filtered = apply_min_p(filtered, torch.full((4,), params.min_p))
    top_k = torch.full((4,), params.top_k if params.top_k > 0 else VOCAB)  # (B,)
    filtered = apply_top_k_top_p(filtered, top_k, torch.full((4,), params.top_p))
    for row in range(4):
        kept = set(torch.isfinite(filtered[row]).nonzero().flatten().tolist())
        row_logits = logits[row].tolist()
        assert kept == _expected_set(row_logits, params.top_k, params.top_p, params.min_p)


def test_top_k_one_equals_argmax(build_metadata):
    logits = torch.randn(8, VOCAB) * 0.1  # (B, V)
    params = [SamplingParams(top_k=1, temperature=2.0)] * 8
    out = Sampler()(logits, build_metadata(params, VOCAB))
    assert out.sampled_token_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_tiny_top_p_keeps_only_the_top_token(build_metadata):
    logits = torch.randn(8, VOCAB)  # (B, V)
    params = [SamplingParams(top_p=1e-6)] * 8
    out = Sampler()(logits, build_metadata(params, VOCAB))
    assert out.sampled_token_ids.tolist() == logits.argmax(dim=-1).tolist()


def test_rows_keep_their_own_filters(build_metadata):
    row_logits = (torch.randn(VOCAB) * 0.8).tolist()
    half = NUM_SAMPLES // 2
    logits = torch.tensor(row_logits).expand(NUM_SAMPLES, VOCAB).clone()  # (B, V)
    params = [SamplingParams(top_k=2)] * half + [SamplingParams()] * half
    sampled = Sampler()(logits, build_metadata(params, VOCAB)).sampled_token_ids
    assert set(sampled[:half].tolist()) == _reference_top_k(row_logits, 2)
    assert len(set(sampled[half:].tolist())) > 2
