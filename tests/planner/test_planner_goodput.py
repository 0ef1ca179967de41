import pytest

from vllm.planner.goodput import deployment_goodput, find_goodput
from vllm.planner.simulate import Deployment, InstanceSpec
from vllm.planner.workload import Slos, Workload


def step_at(limit: float):
    return lambda rate: 1.0 if rate <= limit else 0.0


@pytest.mark.parametrize("start", [0.01, 1.0, 3.0, 50.0])
def test_bisection_finds_the_edge_of_a_step_from_any_start(start):
    goodput = find_goodput(step_at(3.7), 0.9, start, rel_tol=0.001)
    assert goodput.bounded
    assert goodput.rate <= 3.7
    assert goodput.rate == pytest.approx(3.7, rel=0.002)


def test_bisection_on_a_smooth_decline():
    goodput = find_goodput(lambda rate: 1 - rate / 10, 0.9, 0.5, rel_tol=0.001)
    assert goodput.rate == pytest.approx(1.0, rel=0.002)


def test_unmet_even_when_idle_is_zero_goodput():
    assert find_goodput(lambda rate: 0.5, 0.9, 1.0).rate == 0.0


def test_met_at_every_rate_is_unbounded():
    goodput = find_goodput(lambda rate: 1.0, 0.9, 1.0, max_rate=64.0)
    assert goodput == (64.0, False)


def test_start_rate_must_lie_in_range():
    with pytest.raises(ValueError):
        find_goodput(lambda rate: 1.0, 0.9, 0.0)


def test_goodput_of_a_fixed_cost_server_matches_its_capacity():
    # Every step takes 0.1 s whatever it holds and max_num_seqs=1: a request (1 prefill
    # step + 1 decode step) holds the server 0.2 s. TPOT is always 0.1 s; the TTFT SLO of
    # 0.25 s is met only while requests rarely queue, so goodput is well below 5 req/s.
    deployment = Deployment(colocated=(InstanceSpec(lambda load: 0.1, 1, 2048),))
    workload = Workload(16, 2, 50, 1.0)
    goodput = deployment_goodput(deployment, workload, Slos(0.25, 0.2), seeds=2)
    assert goodput.bounded
    assert 0.05 < goodput.rate < 5.0
    looser = deployment_goodput(deployment, workload, Slos(2.0, 0.2), seeds=2)
    assert looser.rate > goodput.rate
