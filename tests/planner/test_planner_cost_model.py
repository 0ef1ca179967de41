import numpy as np
import pytest

from vllm.planner.cost_model import (PAIR_UNIT, Sample, StepCost, StepLoad, fit_step_cost,
                                     non_negative_least_squares, prefill_pairs)

TRUE_COST = StepCost(intercept=0.012, per_prefill_token=0.0009, per_prefill_kpair=0.0004,
                     per_decode_seq=0.0021, per_context_token=3e-6)


def random_loads(count: int, seed: int = 0) -> list[StepLoad]:
    rng = np.random.default_rng(seed)
    loads = []
    for _ in range(count):
        prompt = int(rng.integers(0, 1500))
        seqs = int(rng.integers(0, 40))
        loads.append(StepLoad(prompt, prefill_pairs(int(rng.integers(0, 500)), prompt), seqs,
                              seqs * int(rng.integers(16, 2000))))
    return loads


def test_prefill_pairs_counts_causal_attention_by_hand():
    assert prefill_pairs(0, 1) == 1
    assert prefill_pairs(0, 4) == 1 + 2 + 3 + 4
    assert prefill_pairs(10, 3) == 11 + 12 + 13


def test_step_cost_is_linear_in_the_load():
    load = StepLoad(100, 5050.0, 4, 800)
    expected = 0.012 + 0.0009 * 100 + 0.0004 * 5050 / PAIR_UNIT + 0.0021 * 4 + 3e-6 * 800
    assert TRUE_COST.seconds(load) == pytest.approx(expected)
    assert TRUE_COST.variable_seconds(load) == pytest.approx(expected - 0.012)


def test_fit_recovers_known_coefficients_from_exact_samples():
    samples = [Sample(load, TRUE_COST.seconds(load)) for load in random_loads(30)]
    fitted = fit_step_cost(samples)
    np.testing.assert_allclose(fitted.coefficients(), TRUE_COST.coefficients(), rtol=1e-6)


def test_fit_is_close_under_small_noise():
    rng = np.random.default_rng(1)
    samples = [Sample(load, TRUE_COST.seconds(load) * (1 + rng.normal(0, 0.01)))
               for load in random_loads(200, seed=2)]
    fitted = fit_step_cost(samples)
    for load in random_loads(20, seed=3):
        assert fitted.seconds(load) == pytest.approx(TRUE_COST.seconds(load), rel=0.05)


def test_fit_keeps_coefficients_non_negative():
    no_context = StepCost(0.01, 0.001, 0.0, 0.002, 0.0)
    rng = np.random.default_rng(4)
    samples = [Sample(load, no_context.seconds(load) * (1 + rng.normal(0, 0.05)))
               for load in random_loads(40, seed=5)]
    assert (fit_step_cost(samples).coefficients() >= 0).all()


def test_non_negative_least_squares_drops_a_term_that_would_go_negative():
    matrix = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    target = np.array([2.0, 1.5, 1.0])  # unconstrained slope is -0.5
    solution = non_negative_least_squares(matrix, target)
    assert solution[1] == 0.0
    assert solution[0] == pytest.approx(1.5)


def test_fit_needs_enough_positive_samples():
    loads = random_loads(4)
    with pytest.raises(ValueError, match="at least 5"):
        fit_step_cost([Sample(load, 0.1) for load in loads])
    with pytest.raises(ValueError, match="positive"):
        fit_step_cost([Sample(load, 0.0) for load in random_loads(6)])


def test_step_cost_json_round_trip():
    assert StepCost.from_json(TRUE_COST.to_json()) == TRUE_COST
