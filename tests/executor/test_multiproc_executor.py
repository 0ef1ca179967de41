"""TP=2 (and TP=4, replicating KV heads) in local processes gives TP=1's tokens."""
import gc

import pytest

from vllm.executor.distributed_executor import RankError
from vllm.executor.multiproc import MultiprocExecutor

from tp_helpers import (GREEDY, SEEDED, assert_same_answers, executor_of, make_tp_llm,
                        token_ids, wait_until_gone)


@pytest.fixture(scope="module")
def tp2_llm(tiny_qwen2, demo_model_dir):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 2)
    yield llm
    executor_of(llm).shutdown()


def test_default_backend_for_two_ranks_is_multiproc(tp2_llm):
    executor = executor_of(tp2_llm)
    assert isinstance(executor, MultiprocExecutor)
    assert len(set(executor.worker_pids)) == 2


def test_greedy_and_seeded_tokens_equal_one_rank(tp2_llm, tiny_reference):
    assert_same_answers(tp2_llm, GREEDY, tiny_reference["greedy"])
    assert_same_answers(tp2_llm, SEEDED, tiny_reference["seeded"])
    manager = tp2_llm.llm_engine.engine_core.kv_cache_manager
    assert manager.get_num_free_blocks() == manager.num_blocks


def split_dims(name: str) -> tuple[int, ...]:
    """The dims a rank holds 1/N of (the rest are whole on every rank)."""
    if name.endswith(("qkv_proj.weight", "qkv_proj.bias", "gate_up_proj.weight",
                      "embed_tokens.weight", "lm_head.weight")):
        return (0,)
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return (1,)
    return ()


def test_each_rank_holds_half_of_every_split_weight(tp2_llm, tiny_reference):
    full = tiny_reference["shapes"]
    per_rank = executor_of(tp2_llm).collective_rpc("parameter_shapes")
    assert per_rank[0] == per_rank[1] and set(per_rank[0]) == set(full)
    for name, shape in per_rank[0].items():
        expected = tuple(size // 2 if dim in split_dims(name) else size
                         for dim, size in enumerate(full[name]))
        assert shape == expected, name


def test_kv_blocks_are_the_minimum_over_ranks(tp2_llm):
    executor = executor_of(tp2_llm)
    assert executor.determine_num_blocks() == min(executor.collective_rpc(
        "determine_num_blocks"))


def test_a_failing_call_is_reported_and_the_ranks_live_on(tp2_llm):
    executor = executor_of(tp2_llm)
    with pytest.raises(RankError, match=r"rank \d failed in no_such_method: .*no method"):
        executor.collective_rpc("no_such_method")
    with pytest.raises(RankError, match="no method"):
        executor.collective_rpc("_private")
    executor.check_health()
    assert token_ids(tp2_llm, GREEDY)


def test_four_ranks_replicate_the_two_kv_heads(tiny_qwen2, demo_model_dir, tiny_reference):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 4)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    try:
        shapes = executor.collective_rpc("parameter_shapes")
        head_size = 64 // 4
        qkv_rows = (4 // 4 + 2 * 1) * head_size  # one query head, one K and one V head
        assert {s["model.layers.0.self_attn.qkv_proj.weight"] for s in shapes} == {
            (qkv_rows, 64)}
        assert_same_answers(llm, GREEDY, tiny_reference["greedy"])
    finally:
        del executor, llm
        gc.collect()
    assert wait_until_gone(pids) == []
