"""The near-tie rule itself (tests/near_tie.py): it passes splits at near-ties only."""
from types import SimpleNamespace

import pytest

from near_tie import assert_equal_up_to_near_ties, seeded_margin
from vllm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=3, logprobs=2)
SEEDED = SamplingParams(temperature=1.0, seed=5, max_tokens=3, logprobs=2)


def completion(tokens: list[int], steps: list[dict[int, float]]):
    logprobs = [{t: SimpleNamespace(logprob=v) for t, v in step.items()} for step in steps]
    return SimpleNamespace(token_ids=tokens, logprobs=logprobs)


def test_greedy_split_at_a_near_tie_passes_and_elsewhere_fails():
    want = completion([1, 2, 3], [{1: -0.1, 9: -3.0}, {2: -0.70, 4: -0.71}, {3: -0.2, 5: -2.0}])
    tie = completion([1, 4, 7], want.logprobs)
    assert_equal_up_to_near_ties([tie], [want], GREEDY, min_compared=0.5)
    assert_equal_up_to_near_ties([want], [want], GREEDY, min_compared=1.0)
    for sure in ([9, 2, 3], [1, 2, 5]):
        with pytest.raises(AssertionError, match="reference is sure"):
            assert_equal_up_to_near_ties([completion(sure, want.logprobs)], [want], GREEDY)


def test_too_few_tokens_before_the_splits_fails():
    want = completion([1, 2, 3], [{1: -0.69, 4: -0.70}] + [{2: -0.1}, {3: -0.1}])
    early = completion([4, 2, 3], want.logprobs)
    with pytest.raises(AssertionError, match="lie before"):
        assert_equal_up_to_near_ties([early], [want], GREEDY, min_compared=0.5)


def test_seeded_split_needs_nearly_equal_race_keys():
    # The margin is symmetric, zero for one token against itself, and grows with the gap
    # between the two logprobs.
    assert seeded_margin(SEEDED, 0, 7, -1.0, 7, -1.0) == 0
    near = seeded_margin(SEEDED, 0, 7, -1.0, 8, -1.0)
    assert seeded_margin(SEEDED, 0, 8, -1.0, 7, -1.0) == pytest.approx(near)
    assert seeded_margin(SEEDED, 0, 7, -1.0 + near, 8, -1.0) == pytest.approx(0, abs=1e-5) or \
        seeded_margin(SEEDED, 0, 7, -1.0 - near, 8, -1.0) == pytest.approx(0, abs=1e-5)
