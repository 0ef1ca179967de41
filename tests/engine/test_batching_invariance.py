"""Batch-invariant mode (VLLM_BATCH_INVARIANT=1): a prompt's tokens and logprobs are bit for
bit those of the prompt run alone in a fresh engine, whatever else shares its steps, however
its prefill is chunked, whether its KV comes from the prefix cache or is recomputed after a
preemption. Greedy and seeded rows alternate; the demo model runs its linear layers on the
GGUF-block kernel, the tiny random Qwen2 and DeepSeek-V3 (MLA) on the dense float32 one."""
import pytest

from vllm import LLM, SamplingParams
from vllm.batch_invariant import BATCH_INVARIANT_ENV
from vllm.config import ConfigError

pytestmark = pytest.mark.identity

BASE_PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three uses of copper:",
    "def quicksort(items):",
    "The theory of relativity says that",
    "Translate 'good morning' into Spanish:",
    "A recipe for pancakes needs",
    "The largest planet in the solar system",
]
MAX_TOKENS = 24


def mixed_prompts():
    """16 prompts of varied length (some long enough to span several blocks)."""
    long_prefix = "Here is some background text that goes on for a while. " * 6
    return BASE_PROMPTS + [long_prefix + p for p in BASE_PROMPTS]


def params_for(index: int) -> SamplingParams:
    """Greedy for even prompts, seeded temperature 0.8 for odd ones; top-5 logprobs."""
    if index % 2 == 0:
        return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True,
                              logprobs=5)
    return SamplingParams(temperature=0.8, seed=1000 + index, max_tokens=MAX_TOKENS,
                          ignore_eos=True, logprobs=5)


def answers(llm, prompts, indices=None) -> list[tuple]:
    """(token ids, per-position (token, logprob) pairs) of each prompt, logprobs as floats
    compared exactly."""
    indices = range(len(prompts)) if indices is None else indices
    params = [params_for(i) for i in indices]
    outputs = llm.generate(as_prompts(llm, prompts), params, use_tqdm=False)
    return [(tuple(o.outputs[0].token_ids),
             tuple(tuple(sorted((t, lp.logprob) for t, lp in step.items()))
                   for step in o.outputs[0].logprobs))
            for o in outputs]


def assert_all_blocks_free(llm):
    core = llm.llm_engine.engine_core
    manager = core.kv_cache_manager
    assert manager.get_num_free_blocks() == manager.num_blocks
    assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks)


@pytest.fixture(scope="module")
def invariant_env():
    with pytest.MonkeyPatch.context() as env:
        env.setenv(BATCH_INVARIANT_ENV, "1")
        yield


@pytest.fixture(scope="module", params=["demo", "tiny_qwen2", "tiny_deepseek_v3"])
def model_args(request, demo_model_dir, tiny_model_dirs, tiny_deepseek) -> dict:
    if request.param == "demo":
        return {"model": demo_model_dir}
    if request.param == "tiny_deepseek_v3":  # MLA (absorbed per-token attention) and MoE
        return {"model": tiny_deepseek("v3_moe16"), "tokenizer": demo_model_dir}
    return {"model": tiny_model_dirs["qwen2"], "tokenizer": demo_model_dir}


def as_prompts(llm, prompts: list[str]) -> list:
    """The texts, or for a model with a small vocabulary their token ids folded into it."""
    vocab = llm.llm_engine.engine_core.vllm_config.model_config.vocab_size
    if vocab >= 49152:
        return prompts
    tokenizer = llm.get_tokenizer()
    return [{"prompt_token_ids": [t % (vocab - 3) + 3 for t in tokenizer.encode(p)]}
            for p in prompts]


@pytest.fixture(scope="module")
def reference(invariant_env, model_args):
    """Each prompt alone in an engine without prefix caching."""
    llm = LLM(**model_args, max_model_len=512, enable_prefix_caching=False)
    prompts = mixed_prompts()
    alone = [answers(llm, [p], [i])[0] for i, p in enumerate(prompts)]
    return llm, alone


def test_batch_of_16_equals_alone(reference):
    llm, alone = reference
    assert answers(llm, mixed_prompts()) == alone
    assert_all_blocks_free(llm)


def test_reversed_order_and_subsets(reference):
    llm, alone = reference
    prompts = mixed_prompts()
    order = list(range(len(prompts)))[::-1]
    assert answers(llm, [prompts[i] for i in order], order) == [alone[i] for i in order]
    odd = order[::2]
    assert answers(llm, [prompts[i] for i in odd], odd) == [alone[i] for i in odd]


def test_chunked_prefill_small_budget(reference, model_args):
    _, alone = reference
    llm = LLM(**model_args, max_model_len=512, max_num_batched_tokens=32)
    assert answers(llm, mixed_prompts()) == alone
    assert_all_blocks_free(llm)


def test_prefix_cache_hits(reference, model_args):
    _, alone = reference
    llm = LLM(**model_args, max_model_len=512, enable_prefix_caching=True)
    prompts = mixed_prompts()
    answers(llm, prompts[8:9], [8])  # warm the cache with one long prompt
    outputs = llm.generate(as_prompts(llm, prompts),
                           [params_for(i) for i in range(len(prompts))], use_tqdm=False)
    assert max(o.num_cached_tokens for o in outputs) >= 48
    assert answers(llm, prompts) == alone
    assert_all_blocks_free(llm)


def test_preemption_with_tiny_kv_cache(reference, model_args):
    _, alone = reference
    llm = LLM(**model_args, max_model_len=128, block_size=16, num_gpu_blocks_override=12)
    assert answers(llm, mixed_prompts()) == alone
    assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0
    assert_all_blocks_free(llm)


def test_seeded_sampling_independent_of_batch(reference):
    llm, alone = reference
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    prompts = BASE_PROMPTS[:3]
    params = [unseeded, params_for(1), unseeded]
    mixed = llm.generate(as_prompts(llm, prompts), params, use_tqdm=False)
    assert tuple(mixed[1].outputs[0].token_ids) == alone[1][0]
    other_seed = SamplingParams(temperature=0.8, seed=99, max_tokens=MAX_TOKENS,
                                ignore_eos=True)
    assert tuple(llm.generate(as_prompts(llm, [prompts[1]]), other_seed, use_tqdm=False)[0]
                 .outputs[0].token_ids) != alone[1][0]


@pytest.mark.parametrize("value", ["2", "yes", "on"])
def test_a_bad_value_is_refused(monkeypatch, demo_model_dir, value):
    monkeypatch.setenv(BATCH_INVARIANT_ENV, value)
    with pytest.raises(ConfigError, match=BATCH_INVARIANT_ENV):
        LLM(demo_model_dir, max_model_len=128)


def test_bfloat16_is_refused(monkeypatch, demo_model_dir):
    monkeypatch.setenv(BATCH_INVARIANT_ENV, "1")
    with pytest.raises(ConfigError, match="float32"):
        LLM(demo_model_dir, max_model_len=128, dtype="bfloat16")
