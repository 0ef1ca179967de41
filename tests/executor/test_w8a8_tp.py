"""W8A8 checkpoints on two tensor-parallel ranks: int8 rows and their scales split with the
column-parallel outputs, scales whole on row-parallel layers (static quant_bias added by
rank 0 only), experts' int8 rows split per expert; the tokens are those of one rank under
the near-tie rule (each row-parallel rank quantizes its own slice of the input per token,
as vllm-ascend's do, so the sums differ by rounding)."""
import pytest

from tp_helpers import (GREEDY, assert_same_answers, completions, executor_of, make_tp_llm,
                        wait_until_gone)
from w8a8_reference import quantize_with_cli


@pytest.mark.parametrize("source, method", [("qwen2", "W8A8"), ("v3_moe", "W8A8_DYNAMIC")])
def test_two_ranks_equal_one(tiny_model_dirs, tiny_deepseek, demo_model_dir, tmp_path,
                             source, method):
    model = tiny_deepseek(source) if source.startswith("v3") else tiny_model_dirs[source]
    folder = quantize_with_cli(model, str(tmp_path / "w8a8"), method, demo_model_dir)
    reference = completions(make_tp_llm(folder, demo_model_dir, 1), GREEDY)
    llm = make_tp_llm(folder, demo_model_dir, 2)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    try:
        assert_same_answers(llm, GREEDY, reference)
        shapes = executor.collective_rpc("parameter_shapes")
        layer = "model.layers.0.mlp"
        assert [s[f"{layer}.down_proj.weight_scale"] for s in shapes] == \
            [shapes[0][f"{layer}.down_proj.weight"][:1]] * 2
        column = shapes[0][f"{layer}.gate_up_proj.weight"][0]
        assert [s[f"{layer}.gate_up_proj.weight_scale"] for s in shapes] == [(column,)] * 2
    finally:
        executor.shutdown()
    assert wait_until_gone(pids) == []
