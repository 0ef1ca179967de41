"""The NPU platform and backend (over the fake torch_npu) through the real engine: greedy
tokens equal the CPU backend's on tiny random Llama and Qwen2 models, through prefill,
chunked prefill, prefix-cache hits, mixed batches and TorchAir decode graphs."""
import pytest

from engine_checks import assert_same_greedy, random_prompts, run_prompts
from fake_npu_platform import fake_calls, fake_npu
from kvt_harness import make_core

LENGTHS = [1, 3, 20, 127, 128, 129, 200, 300]
ALL_NPU_OPS = {"_npu_reshape_and_cache", "_npu_flash_attention", "_npu_paged_attention",
               "npu_fused_infer_attention_score"}


def cpu_reference(model: str, prompts, waves: int = 1):
    core = make_core(model=model, dtype="float32")
    try:
        return run_prompts(core, prompts, waves=waves)
    finally:
        core.shutdown()


def npu_run(model: str, prompts, waves: int = 1, **overrides):
    core = make_core(model=model, dtype="bfloat16", **overrides)
    try:
        assert core.vllm_config.cache_config.block_size == 128
        return run_prompts(core, prompts, waves=waves)
    finally:
        core.shutdown()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_npu_engine_matches_cpu_backend(tiny_model_dirs, arch):
    model = tiny_model_dirs[arch]
    prompts = random_prompts(LENGTHS, seed=1)
    # Two waves sharing a 130-token prefix: the second wave hits a cached block.
    shared = random_prompts([140, 150, 135, 160, 145, 131], seed=2, shared_prefix=130)
    want, want_lp = cpu_reference(model, prompts)
    want_shared, want_shared_lp = cpu_reference(model, shared, waves=2)
    with fake_npu():
        fake_calls().clear()
        got, _ = npu_run(model, prompts)
        got_chunked, _ = npu_run(model, prompts, max_num_batched_tokens=64)
        got_shared, _ = npu_run(model, shared, waves=2)
        calls = dict(fake_calls())
    assert ALL_NPU_OPS <= set(calls), calls
    assert_same_greedy(got, want, want_lp)
    assert_same_greedy(got_chunked, want, want_lp)
    assert_same_greedy(got_shared, want_shared, want_shared_lp)


def test_torchair_decode_graphs(tiny_model_dirs, monkeypatch):
    """With torchair_graph_config enabled, decode steps go through the platform's compiled
    callable with graph metadata (padded batch sizes); tokens match eager NPU. torch.compile
    itself is not run here: the fake ops are Python, not traceable torch ops."""
    model = tiny_model_dirs["llama"]
    prompts = random_prompts([5, 40, 130, 7, 66], seed=3)
    graph_calls = []

    def compile_decode(forward):
        def compiled(input_ids, positions):
            graph_calls.append(input_ids.shape[0])
            return forward(input_ids, positions)
        return compiled

    with fake_npu() as platform:
        eager, eager_lp = npu_run(model, prompts)
        monkeypatch.setattr(platform, "compile_decode", compile_decode)
        fake_calls().clear()
        graphs, _ = npu_run(model, prompts, additional_config={
            "torchair_graph_config": {"enabled": True}})
        calls = dict(fake_calls())
        graph_calls_before_eager = len(graph_calls)
        npu_run(model, prompts, enforce_eager=True, additional_config={
            "torchair_graph_config": {"enabled": True}})
    assert graph_calls_before_eager > 0 and len(graph_calls) == graph_calls_before_eager
    assert set(graph_calls) <= {1, 2, 4, 8}  # padded sizes only
    assert calls.get("npu_scatter_nd_update_", 0) > 0
    assert_same_greedy(graphs, eager, eager_lp, min_exact=0.8)
