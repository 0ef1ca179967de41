"""The demo model (SmolLM2-135M: 9 heads, 3 KV heads) on three local ranks."""
import pytest

from tp_helpers import (DEMO_GREEDY, DEMO_PROMPTS, DEMO_SEEDED, assert_same_answers, executor_of,
                        make_tp_llm, wait_until_gone)


@pytest.mark.slow
def test_three_ranks_give_the_tokens_of_one(demo_model_dir, demo_reference):
    llm = make_tp_llm(demo_model_dir, demo_model_dir, 3, num_gpu_blocks_override=128)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    try:
        assert_same_answers(llm, DEMO_GREEDY, demo_reference["greedy"], DEMO_PROMPTS)
        assert_same_answers(llm, DEMO_SEEDED, demo_reference["seeded"], DEMO_PROMPTS)
        shapes = executor.collective_rpc("parameter_shapes")
        # 3 query heads + 1 K head + 1 V head of 64 on each rank; vocabulary rows / 3
        assert {s["model.layers.0.self_attn.qkv_proj.weight"] for s in shapes} == {(320, 576)}
        assert {s["model.embed_tokens.weight"] for s in shapes} == {(49152 // 3, 576)}
    finally:
        executor.shutdown()
    assert wait_until_gone(pids) == []
