"""Tensor-parallel sizes that do not divide the KV heads: KV groups split 2 + 1 (or 4 + 2
query heads), and the tokens are still those of one rank."""
import pytest

from tp_helpers import (DEMO_GREEDY, DEMO_PROMPTS, DEMO_SEEDED, GREEDY, SEEDED,
                        assert_same_answers, executor_of, make_tp_llm, wait_until_gone)

HEAD_DIM = 16  # the tiny model: hidden 96 over 6 heads


def test_tiny_qwen2_on_two_ranks(uneven_qwen2, demo_model_dir, uneven_reference):
    llm = make_tp_llm(uneven_qwen2, demo_model_dir, 2)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    try:
        assert_same_answers(llm, GREEDY, uneven_reference["greedy"])
        assert_same_answers(llm, SEEDED, uneven_reference["seeded"])
        shapes = executor.collective_rpc("parameter_shapes")
        qkv = [s["model.layers.0.self_attn.qkv_proj.weight"] for s in shapes]
        o_proj = [s["model.layers.0.self_attn.o_proj.weight"] for s in shapes]
        # rank 0: 4 query heads + 2 K + 2 V; rank 1: 2 query heads + 1 K + 1 V
        assert qkv == [(8 * HEAD_DIM, 96), (4 * HEAD_DIM, 96)]
        assert o_proj == [(96, 4 * HEAD_DIM), (96, 2 * HEAD_DIM)]
        assert [s["model.layers.0.mlp.down_proj.weight"] for s in shapes] == [(96, 64)] * 2
    finally:
        executor.shutdown()
    assert wait_until_gone(pids) == []


@pytest.mark.slow
def test_demo_model_on_two_ranks(demo_model_dir, demo_reference):
    """SmolLM2: 9 heads, 3 KV heads of 64 -> rank 0 holds 6 + 2 + 2 heads, rank 1 3 + 1 + 1."""
    llm = make_tp_llm(demo_model_dir, demo_model_dir, 2, num_gpu_blocks_override=128)
    executor = executor_of(llm)
    try:
        assert_same_answers(llm, DEMO_GREEDY, demo_reference["greedy"], DEMO_PROMPTS)
        assert_same_answers(llm, DEMO_SEEDED, demo_reference["seeded"], DEMO_PROMPTS)
        shapes = executor.collective_rpc("parameter_shapes")
        assert [s["model.layers.0.self_attn.qkv_proj.weight"] for s in shapes] \
            == [(640, 576), (320, 576)]
    finally:
        executor.shutdown()
