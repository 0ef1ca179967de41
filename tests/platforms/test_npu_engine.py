"""The NPU platform and backend (over the fake torch_npu) through the real engine: greedy
tokens equal the CPU backend's on tiny random Llama and Qwen2 models, through prefill,
chunked prefill, prefix-cache hits, mixed batches and TorchAir decode graphs."""
import pytest

from engine_checks import GREEDY, assert_same_greedy, random_prompts, run_prompts
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


def test_torchair_decode_graphs(tiny_model_dirs):
    """With torchair_graph_config enabled, decode steps run through torch.compile with the
    fake TorchAir backend (Dynamo traces the whole model; the attention ops are custom ops
    with fake kernels). Over many steps each padded batch size compiles once, and nothing
    falls back to eager (TorchAir's attention op refuses eager calls); tokens match eager."""
    import torch
    from vllm.worker import graph_runner
    model = tiny_model_dirs["llama"]
    prompts = random_prompts([5, 40, 130, 7, 66], seed=3)
    padded_sizes = []
    pad = graph_runner.pad_decode_batch

    def recording_pad(input_ids, positions, common, size):
        padded_sizes.append(size)
        return pad(input_ids, positions, common, size)

    with fake_npu():
        import torchair
        eager, eager_lp = npu_run(model, prompts)
        torch._dynamo.reset()
        torchair.COMPILES.clear()
        fake_calls().clear()
        graph_runner.pad_decode_batch = recording_pad
        try:
            graphs, _ = npu_run(model, prompts, additional_config={
                "torchair_graph_config": {"enabled": True}})
            calls, compiles = dict(fake_calls()), torchair.COMPILES["graphs"]
            steps = len(padded_sizes)
            npu_run(model, prompts, enforce_eager=True, additional_config={
                "torchair_graph_config": {"enabled": True}})
        finally:
            graph_runner.pad_decode_batch = pad
    # Every decode step after the first token ran as a graph; no graph ran after eager.
    assert steps >= GREEDY.max_tokens - 1 and len(padded_sizes) == steps
    assert set(padded_sizes) <= {1, 2, 4, 8}  # padded sizes only
    assert 0 < compiles <= len(set(padded_sizes)), (compiles, sorted(set(padded_sizes)))
    assert calls["torchair.ops.npu_fused_infer_attention_score"] > 0
    assert calls["npu_scatter_nd_update_"] > 0
    assert_same_greedy(graphs, eager, eager_lp, min_compared=0.8)
