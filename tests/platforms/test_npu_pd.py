"""1P1D in one process on the NPU platform and backend (fake torch_npu): the consumer's
greedy tokens equal a colocated NPU engine's, and every block comes back."""
from engine_checks import assert_same_greedy, random_prompts, run_1p1d, run_prompts
from fake_npu_platform import fake_npu
from kvt_harness import EngineSet, assert_clean, kv_config


class NpuPD(EngineSet):

    def build(self, model):
        common = dict(model=model, dtype="bfloat16")
        self.producer = self.core(kv_config("kv_producer"), **common)
        self.consumer = self.core(kv_config("kv_consumer"), **common)
        self.colocated = self.core(**common)


def test_npu_1p1d_tokens_equal_colocated(tiny_model_dirs):
    prompts = random_prompts([2, 17, 128, 129, 260], seed=4)
    with fake_npu():
        pd = NpuPD(tiny_model_dirs["qwen2"])
        try:
            want, want_lp = run_prompts(pd.colocated, prompts)
            ids, consumed = run_1p1d(pd, prompts)
            got = [consumed.tokens[rid] for rid in ids]
            for rid, prompt in zip(ids, prompts):
                assert consumed.num_cached[rid] == len(prompt) - 1, rid  # the KV moved
            assert_clean(pd.producer, pd.consumer)
        finally:
            pd.shutdown()
    assert_same_greedy(got, want, want_lp, min_compared=0.6)
