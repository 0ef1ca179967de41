import json
import time

import pytest

from vllm.planner.cost_model import Sample, StepCost, StepLoad
from vllm.planner.model_shape import ModelShape
from vllm.planner.profile import (DecodePoint, Profile, ThreadProfile, decode_load,
                                  load_profile, plan_for_workload, prefill_load)

SHAPE = ModelShape(30, 576, 9, 3, 64, 1536, 8192)


def test_plan_covers_the_workload_prompt_and_batches_up_to_max_num_seqs():
    plan = plan_for_workload(512, 128, 256, 2048)
    assert (512,) in plan.prefill_groups
    assert (1024,) in plan.prefill_groups
    assert (128, 128, 128, 128) in plan.prefill_groups
    batches = sorted({p.batch_size for p in plan.decode_points})
    assert batches == [1, 2, 4, 8, 16, 32, 64]
    assert any(p.context_len == 640 for p in plan.decode_points)
    assert any(p.prefill_len == 512 for p in plan.decode_points)


def test_plan_respects_small_limits():
    plan = plan_for_workload(3000, 100, 3, 1024)
    assert max(sum(group) for group in plan.prefill_groups) <= 1024
    assert max(p.batch_size for p in plan.decode_points) <= 3


def test_loads_of_the_profiled_shapes():
    assert prefill_load((4, 4)) == StepLoad(8, 20.0, 0, 0)
    load = decode_load(DecodePoint(2, 100))
    assert load.decode_seqs == 2 and load.prefill_tokens == 0
    assert 2 * 101 <= load.decode_context_tokens <= 2 * 110


def profile_with(threads: dict[int, StepCost]) -> Profile:
    samples = [Sample(StepLoad(10 * k, 0.0, k, 0), 0.01 * k) for k in range(1, 6)]
    return Profile("model.gguf", SHAPE, {t: ThreadProfile(t, samples, c)
                                         for t, c in threads.items()}, load_average=0.5)


def test_profile_json_round_trip(tmp_path):
    profile = profile_with({1: StepCost(0.01, 0.002, 0.001, 0.003, 1e-6),
                            2: StepCost(0.008, 0.001, 0.0005, 0.002, 1e-6)})
    path = tmp_path / "profile.json"
    profile.save(str(path))
    loaded = load_profile(str(path))
    assert loaded.shape == SHAPE
    assert loaded.cost_for(2) == profile.cost_for(2)
    assert loaded.threads[1].samples == profile.threads[1].samples


def test_missing_thread_count_and_bad_files_are_clear_errors(tmp_path):
    profile = profile_with({1: StepCost(0.01, 0.002, 0.001, 0.003, 1e-6)})
    with pytest.raises(ValueError, match="no measurements with 4 thread"):
        profile.cost_for(4)
    not_json = tmp_path / "bad.json"
    not_json.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_profile(str(not_json))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"version": 1, "model": "m"}))
    with pytest.raises(ValueError, match="not a planner profile"):
        load_profile(str(wrong))


@pytest.mark.slow
def test_short_real_profile_of_the_demo_model(demo_gguf):
    from vllm.planner.model_shape import load_model_shape
    from vllm.planner.profile import run_profile
    shape = load_model_shape(demo_gguf)
    plan = plan_for_workload(64, 16, 4, 256)
    started = time.perf_counter()
    profile = run_profile(demo_gguf, shape, [1], plan, log=lambda line: None)
    assert time.perf_counter() - started < 60
    measured = profile.threads[1]
    assert len(measured.samples) == len(plan.prefill_groups) + len(plan.decode_points)
    assert all(sample.seconds > 0 for sample in measured.samples)
    cost = measured.cost
    # Physics the fit must get right: a bigger prefill costs more than a small one, and a
    # prefill of 128 tokens more than a step decoding one token.
    assert cost.seconds(prefill_load((128,))) > cost.seconds(prefill_load((16,)))
    assert cost.seconds(prefill_load((128,))) > cost.seconds(decode_load(DecodePoint(1, 64)))
    assert all(value >= 0 for value in cost.coefficients())


def test_plan_stays_inside_the_model_context():
    plan = plan_for_workload(3000, 1000, 8, 8192, max_model_len=4096)
    assert plan.max_context <= 4096
    with pytest.raises(ValueError, match="exceeds the model's 4096"):
        plan_for_workload(4000, 200, 8, 8192, max_model_len=4096)
