"""Scheduler and KV cache manager driven by fake model-runner outputs (no model)."""
import random

import pytest

from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.request import Request, RequestStatus
from vllm.core.sched_output import ModelRunnerOutput
from vllm.core.scheduler import Scheduler
from vllm.sampling_params import SamplingParams

EOS = 0


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_model_len=256,
                   caching=True):
    config = VllmConfig(
        model_config=ModelConfig("m", "m", None, None, max_model_len),
        cache_config=CacheConfig(block_size, caching),
        scheduler_config=SchedulerConfig(max_num_seqs, budget, max_model_len))
    return Scheduler(config, KVCacheManager(num_blocks, block_size, caching))


def make_request(request_id, num_prompt, max_tokens=4, **params):
    prompt = [random.randrange(1, 1000) for _ in range(num_prompt)]
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, **params), EOS)


def fake_runner_output(scheduler, output, token=7):
    """Sample `token` for every request whose scheduled tokens reach its end."""
    req_ids, sampled = [], []
    for req_id in output.num_scheduled_tokens:
        request = scheduler.requests[req_id]
        req_ids.append(req_id)
        done = request.num_computed_tokens >= request.num_tokens
        sampled.append([token] if done else [])
    return ModelRunnerOutput(req_ids, sampled)


def run_to_completion(scheduler, max_steps=10_000, token=7):
    finished, steps = {}, 0
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        for out in scheduler.update_from_output(output, fake_runner_output(scheduler, output,
                                                                           token)):
            if out.finished:
                finished[out.request_id] = out.finish_reason
        steps += 1
        assert steps < max_steps, "scheduler made no progress"
    return finished


def assert_no_leak(scheduler):
    pool = scheduler.kv_cache_manager.block_pool
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    assert pool.get_num_free_blocks() == pool.num_blocks
    assert not scheduler.kv_cache_manager.req_to_blocks


def test_budget_and_chunked_prefill():
    scheduler = make_scheduler(budget=16)
    scheduler.add_request(make_request("a", 40))
    output = scheduler.schedule()
    assert output.num_scheduled_tokens == {"a": 16}
    assert output.scheduled_new_reqs[0].block_ids == [0, 1, 2, 3]
    scheduler.update_from_output(output, fake_runner_output(scheduler, output))
    output = scheduler.schedule()
    assert output.num_scheduled_tokens == {"a": 16}
    assert output.scheduled_cached_reqs[0].num_computed_tokens == 16
    assert len(output.scheduled_cached_reqs[0].new_block_ids) == 4


def test_max_num_seqs_caps_the_batch():
    scheduler = make_scheduler(max_num_seqs=2, budget=1000)
    for i in range(4):
        scheduler.add_request(make_request(str(i), 5))
    output = scheduler.schedule()
    assert set(output.num_scheduled_tokens) == {"0", "1"}


def test_decode_then_length_finish():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 6, max_tokens=3))
    finished = run_to_completion(scheduler)
    assert finished == {"a": "length"}
    assert_no_leak(scheduler)


def test_eos_stops_unless_ignored_and_respects_min_tokens():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("eos", 4, max_tokens=10))
    scheduler.add_request(make_request("ignore", 4, max_tokens=5, ignore_eos=True))
    scheduler.add_request(make_request("min", 4, max_tokens=10, min_tokens=3))
    counts = {}
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        for out in scheduler.update_from_output(output, fake_runner_output(scheduler, output,
                                                                           token=EOS)):
            counts[out.request_id] = counts.get(out.request_id, 0) + len(out.new_token_ids)
    assert counts == {"eos": 1, "ignore": 5, "min": 3}
    assert_no_leak(scheduler)


def test_stop_token_ids_set_stop_reason():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4, max_tokens=10, stop_token_ids=[7]))
    output = scheduler.schedule()
    (out,) = scheduler.update_from_output(output, fake_runner_output(scheduler, output))
    assert (out.finish_reason, out.stop_reason) == ("stop", 7)


def test_preemption_by_recompute_when_blocks_run_out():
    scheduler = make_scheduler(num_blocks=8, block_size=4, budget=64)
    for i in range(3):
        scheduler.add_request(make_request(str(i), 8, max_tokens=12))
    finished = run_to_completion(scheduler)
    assert finished == {"0": "length", "1": "length", "2": "length"}
    assert scheduler.num_preemptions > 0
    assert_no_leak(scheduler)


def test_resumed_request_is_sent_as_cached_with_its_tokens():
    scheduler = make_scheduler(num_blocks=5, block_size=4, budget=64)
    scheduler.add_request(make_request("old", 8, max_tokens=12))
    scheduler.add_request(make_request("new", 8, max_tokens=12))
    seen_resume = False
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        for cached in output.scheduled_cached_reqs:
            if cached.resumed_from_preemption:
                seen_resume = True
                request = scheduler.requests[cached.req_id]
                assert cached.resumed_token_ids == request.output_token_ids
                assert cached.num_computed_tokens == 0 or cached.num_computed_tokens % 4 == 0
        scheduler.update_from_output(output, fake_runner_output(scheduler, output))
    assert seen_resume
    assert_no_leak(scheduler)


def test_abort_frees_blocks_waiting_and_running():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add_request(make_request("run", 10))
    scheduler.add_request(make_request("wait", 10))
    output = scheduler.schedule()
    scheduler.update_from_output(output, fake_runner_output(scheduler, output))
    scheduler.finish_requests(["run", "wait", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished_requests()
    assert scheduler.schedule().finished_req_ids == {"run", "wait"}
    assert_no_leak(scheduler)


def test_duplicate_request_id_rejected():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="already in use"):
        scheduler.add_request(make_request("a", 4))


def test_prefix_hits_reported_as_cached_tokens():
    scheduler = make_scheduler(block_size=4)
    first = make_request("a", 12)
    scheduler.add_request(first)
    run_to_completion(scheduler)
    second = Request("b", first.prompt_token_ids + [5, 6], SamplingParams(max_tokens=2), EOS)
    scheduler.add_request(second)
    output = scheduler.schedule()
    assert output.scheduled_new_reqs[0].num_computed_tokens == 12
    assert output.num_scheduled_tokens == {"b": 2}
    scheduler.update_from_output(output, fake_runner_output(scheduler, output))
    run_to_completion(scheduler)
    assert second.num_cached_tokens == 12
    assert_no_leak(scheduler)


@pytest.mark.parametrize("seed", range(5))
def test_random_workload_never_leaks(seed):
    rng = random.Random(seed)
    random.seed(seed)
    scheduler = make_scheduler(num_blocks=rng.randint(12, 40), block_size=4,
                               max_num_seqs=rng.randint(1, 8), budget=rng.randint(8, 64),
                               max_model_len=48)
    live = []
    for step in range(400):
        if rng.random() < 0.3:
            request_id = f"r{step}"
            scheduler.add_request(make_request(request_id, rng.randint(1, 30),
                                               max_tokens=rng.randint(1, 16)))
            live.append(request_id)
        if live and rng.random() < 0.05:
            scheduler.finish_requests([live.pop(rng.randrange(len(live)))],
                                      RequestStatus.FINISHED_ABORTED)
        output = scheduler.schedule()
        assert output.total_num_scheduled_tokens <= scheduler.max_num_batched_tokens
        assert len(output.num_scheduled_tokens) <= scheduler.max_num_seqs
        scheduler.update_from_output(output, fake_runner_output(scheduler, output,
                                                                token=rng.choice([EOS, 9])))
    run_to_completion(scheduler)
    assert_no_leak(scheduler)
