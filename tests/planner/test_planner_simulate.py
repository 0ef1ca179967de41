"""The simulator against cases small enough to work out by hand."""
import math

import pytest

from vllm.planner.instance_cost import TransferCost
from vllm.planner.sim_metrics import itls_s, tpot_s, ttft_s
from vllm.planner.simulate import Deployment, InstanceSpec, simulate
from vllm.planner.workload import Workload

PREFILL_S = 1.0
DECODE_S = 0.1


def constant(seconds: float):
    return lambda load: seconds


def prefill_or_decode(load) -> float:
    """A step with a real prefill chunk costs 1 s; decodes and last prompt tokens 0.1 s."""
    return PREFILL_S if load.prefill_tokens >= 10 else DECODE_S


def one_instance(step, max_num_seqs=256, budget=2048) -> Deployment:
    return Deployment(colocated=(InstanceSpec(step, max_num_seqs, budget),))


def pd(step, transfer, num_prefill=1, budget=2048) -> Deployment:
    spec = InstanceSpec(step, 256, budget)
    return Deployment(prefill=(spec,) * num_prefill, decode=(spec,), transfer=transfer)


def at_once(count, input_len=100, output_len=5, max_concurrency=None) -> Workload:
    return Workload(input_len, output_len, count, math.inf, max_concurrency=max_concurrency)


def test_one_request_ttft_is_the_prefill_step_and_tpot_the_decode_step():
    outcome = simulate(one_instance(prefill_or_decode), at_once(1))
    request = outcome.requests[0]
    assert ttft_s(request) == pytest.approx(PREFILL_S)
    assert tpot_s(request) == pytest.approx(DECODE_S)
    assert itls_s(request) == pytest.approx([DECODE_S] * 4)
    assert outcome.duration_s == pytest.approx(PREFILL_S + 4 * DECODE_S)


def test_constant_step_cost_gives_one_token_per_step():
    outcome = simulate(one_instance(constant(0.25)), at_once(1, output_len=8))
    assert outcome.requests[0].token_times == pytest.approx([0.25 * k for k in range(1, 9)])


def test_two_requests_share_steps_when_the_budget_allows():
    outcome = simulate(one_instance(prefill_or_decode), at_once(2))
    assert [ttft_s(r) for r in outcome.requests] == pytest.approx([PREFILL_S, PREFILL_S])


def test_chunked_prefill_runs_behind_the_running_decode():
    # budget 100: step 1 prefills request 0; step 2 decodes it and prefills 99 tokens of
    # request 1 (a 1 s step); step 3 decodes request 0 and computes request 1's last token.
    outcome = simulate(one_instance(prefill_or_decode, budget=100), at_once(2, output_len=3))
    first, second = outcome.requests
    assert first.token_times == pytest.approx([1.0, 2.0, 2.1])
    assert ttft_s(second) == pytest.approx(2.1)


def test_max_num_seqs_keeps_the_second_request_waiting():
    outcome = simulate(one_instance(constant(0.5), max_num_seqs=1), at_once(2, output_len=4))
    first, second = outcome.requests
    assert first.done_s == pytest.approx(2.0)
    assert ttft_s(second) == pytest.approx(2.5)  # sent at 0, first token after 5 steps


def test_max_concurrency_sends_the_next_request_when_one_finishes():
    outcome = simulate(one_instance(constant(0.5)), at_once(3, output_len=4, max_concurrency=1))
    assert [r.sent_s for r in outcome.requests] == pytest.approx([0.0, 2.0, 4.0])
    assert [ttft_s(r) for r in outcome.requests] == pytest.approx([0.5] * 3)  # from the send
    assert outcome.duration_s == pytest.approx(6.0)


def test_requests_arrive_at_the_workload_rate():
    workload = Workload(100, 2, 5, request_rate=2.0, seed=3)
    outcome = simulate(one_instance(constant(0.01)), workload)
    expected = workload.arrival_times()
    assert [r.sent_s for r in outcome.requests] == pytest.approx(list(expected))


def test_pd_adds_the_transfer_and_a_decode_step_to_ttft():
    transfer = TransferCost(kv_bytes_per_token=1000, bandwidth_bytes_per_s=1e6, overhead_s=0.05)
    outcome = simulate(pd(prefill_or_decode, transfer), at_once(1))
    request = outcome.requests[0]
    # prefill 1 s, 100 tokens x 1000 B at 1 MB/s = 0.1 s, 0.05 s overhead, last prompt token
    assert ttft_s(request) == pytest.approx(1.0 + 0.1 + 0.05 + DECODE_S)
    assert tpot_s(request) == pytest.approx(DECODE_S)


def test_pd_prefills_queue_fcfs_on_one_prefill_instance():
    transfer = TransferCost(0, 1e9, overhead_s=0.5)
    outcome = simulate(pd(prefill_or_decode, transfer, budget=100), at_once(2, output_len=3))
    first, second = outcome.requests
    assert first.token_times == pytest.approx([1.6, 1.7, 1.8])  # KV in at 1.5
    assert second.token_times == pytest.approx([2.6, 2.7, 2.8])  # prefilled 1..2, KV at 2.5


def test_pd_router_spreads_prefills_over_prefill_instances():
    transfer = TransferCost(0, 1e9, overhead_s=0.5)
    outcome = simulate(pd(prefill_or_decode, transfer, num_prefill=2, budget=100),
                       at_once(2, output_len=3))
    assert [ttft_s(r) for r in outcome.requests] == pytest.approx([1.6, 1.6])


def test_deployment_must_be_colocated_or_disaggregated():
    spec = InstanceSpec(constant(1.0), 1, 1)
    with pytest.raises(ValueError, match="either colocated"):
        Deployment()
    with pytest.raises(ValueError, match="either colocated"):
        Deployment(colocated=(spec,), prefill=(spec,))
    with pytest.raises(ValueError, match="transfer"):
        Deployment(prefill=(spec,), decode=(spec,))
