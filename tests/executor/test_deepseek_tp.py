"""DeepSeek (MLA, MoE) on two tensor-parallel ranks: query heads and kv_b_proj split by head,
the latent projection and its cache replicated, o_proj row-parallel, each expert's
intermediate rows split; the tokens are those of one rank under the near-tie rule."""
import pytest

from tp_helpers import (GREEDY, SEEDED, assert_same_answers, completions, executor_of,
                        make_tp_llm, wait_until_gone)


@pytest.mark.parametrize("variant, heads_per_rank", [("v3_moe", [2, 2]),
                                                     ("v3_3heads", [2, 1])])
def test_two_ranks_equal_one(tiny_deepseek, demo_model_dir, variant, heads_per_rank):
    folder = tiny_deepseek(variant)
    single = make_tp_llm(folder, demo_model_dir, 1)
    reference = {"greedy": completions(single, GREEDY), "seeded": completions(single, SEEDED)}
    llm = make_tp_llm(folder, demo_model_dir, 2)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    try:
        assert_same_answers(llm, GREEDY, reference["greedy"])
        assert_same_answers(llm, SEEDED, reference["seeded"])
        shapes = executor.collective_rpc("parameter_shapes")
        config = single.llm_engine.engine_core.vllm_config.model_config.hf_config
        per_head = config.qk_nope_head_dim + config.v_head_dim
        latent = config.kv_lora_rank + config.qk_rope_head_dim
        layer = "model.layers.0.self_attn"
        assert [s[f"{layer}.kv_b_proj.weight"] for s in shapes] == \
            [(n * per_head, config.kv_lora_rank) for n in heads_per_rank]
        assert [s[f"{layer}.o_proj.weight"] for s in shapes] == \
            [(config.hidden_size, n * config.v_head_dim) for n in heads_per_rank]
        assert [s[f"{layer}.kv_a_proj_with_mqa.weight"] for s in shapes] == \
            [(latent, config.hidden_size)] * 2
    finally:
        executor.shutdown()
    assert wait_until_gone(pids) == []
