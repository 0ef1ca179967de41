"""On a CUDA GPU (marked cuda, skipped without one): greedy tokens equal Hugging Face's,
with and without CUDA graphs, and 1P1D over NCCL equals a colocated instance."""
import pytest
import torch

from engine_checks import GREEDY, random_prompts, run_1p1d, run_prompts
from vllm.attention.backends.cuda import use_flash_attn
from kvt_harness import EngineSet, assert_clean, kv_config, make_core

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def hf_greedy(model_dir: str, prompts, max_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).cuda()
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device="cuda")
        generated = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                   min_new_tokens=max_tokens)
        out.append(generated[0, len(prompt):].tolist())
    return out


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_hf_parity_on_gpu(tiny_model_dirs, enforce_eager):
    model = tiny_model_dirs["llama"]
    prompts = random_prompts([3, 20, 130], seed=5)
    core = make_core(model=model, dtype="float32", enforce_eager=enforce_eager)
    try:
        got, _ = run_prompts(core, prompts)
        runner = core.executor.worker.model_runner.graph_runner
        if not enforce_eager and use_flash_attn(core.vllm_config.cache_config.block_size):
            assert runner.graphs  # every padded size captured at start-up
        else:
            assert runner is None  # SDPA decodes run eagerly
    finally:
        core.shutdown()
    assert got == hf_greedy(model, prompts, GREEDY.max_tokens)


class CudaPD(EngineSet):

    def build(self, model):
        self.producer = self.core(kv_config("kv_producer"), model=model)
        self.consumer = self.core(kv_config("kv_consumer"), model=model)
        self.colocated = self.core(model=model)


def test_1p1d_over_nccl(tiny_model_dirs):
    prompts = random_prompts([2, 17, 300], seed=6)
    pd = CudaPD(tiny_model_dirs["qwen2"])
    try:
        want, _ = run_prompts(pd.colocated, prompts)
        ids, consumed = run_1p1d(pd, prompts)
        assert [consumed.tokens[rid] for rid in ids] == want
        assert_clean(pd.producer, pd.consumer)
    finally:
        pd.shutdown()
