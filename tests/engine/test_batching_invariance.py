"""A prompt's greedy tokens do not depend on what else the engine is doing."""
import pytest

from vllm import LLM, SamplingParams

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
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def mixed_prompts():
    """16 prompts of varied length (some long enough to span several blocks)."""
    long_prefix = "Here is some background text that goes on for a while. " * 6
    return BASE_PROMPTS + [long_prefix + p for p in BASE_PROMPTS]


def greedy_tokens(llm, prompts, params=GREEDY):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def assert_all_blocks_free(llm):
    core = llm.llm_engine.engine_core
    manager = core.kv_cache_manager
    assert manager.get_num_free_blocks() == manager.num_blocks
    assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks)


@pytest.fixture(scope="module")
def reference(demo_model_dir):
    llm = LLM(demo_model_dir, max_model_len=512, enable_prefix_caching=False)
    alone = {p: greedy_tokens(llm, [p])[0] for p in mixed_prompts()}
    return llm, alone


def test_batch_of_16_equals_alone(reference):
    llm, alone = reference
    prompts = mixed_prompts()
    assert greedy_tokens(llm, prompts) == [alone[p] for p in prompts]
    assert_all_blocks_free(llm)


def test_chunked_prefill_small_budget(reference, demo_model_dir):
    _, alone = reference
    llm = LLM(demo_model_dir, max_model_len=512, max_num_batched_tokens=32)
    prompts = mixed_prompts()
    assert greedy_tokens(llm, prompts) == [alone[p] for p in prompts]
    assert_all_blocks_free(llm)


def test_prefix_cache_hits(reference, demo_model_dir):
    _, alone = reference
    llm = LLM(demo_model_dir, max_model_len=512, enable_prefix_caching=True)
    prompts = mixed_prompts()
    greedy_tokens(llm, prompts[8:9])  # warm the cache with one long prompt
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [alone[p] for p in prompts]
    assert max(o.num_cached_tokens for o in outputs) >= 48
    again = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert all(o.num_cached_tokens > 0 for o in again if len(o.prompt_token_ids) > 32)
    assert [o.outputs[0].token_ids for o in again] == [alone[p] for p in prompts]
    assert_all_blocks_free(llm)


def test_preemption_with_tiny_kv_cache(reference, demo_model_dir):
    _, alone = reference
    llm = LLM(demo_model_dir, max_model_len=128, block_size=16, num_gpu_blocks_override=12)
    prompts = mixed_prompts()
    assert greedy_tokens(llm, prompts) == [alone[p] for p in prompts]
    assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0
    assert_all_blocks_free(llm)


def test_seeded_sampling_independent_of_batch(reference):
    llm, _ = reference
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=1234, max_tokens=16,
                            ignore_eos=True)
    alone = greedy_tokens(llm, [BASE_PROMPTS[2]], seeded)[0]
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    prompts = BASE_PROMPTS[:2] + [BASE_PROMPTS[2]] + BASE_PROMPTS[3:]
    params = [unseeded, unseeded, seeded] + [unseeded] * 5
    mixed = greedy_tokens(llm, prompts, params)
    assert mixed[2] == alone
    other_seed = SamplingParams(temperature=0.8, top_p=0.9, seed=99, max_tokens=16,
                                ignore_eos=True)
    assert greedy_tokens(llm, [BASE_PROMPTS[2]], other_seed)[0] != alone
