"""DeepSeek V2/V3 (MLA, latent KV cache) through the engine: greedy tokens and top-5 logprobs
against transformers, the chunked-context MLA prefill, the KV cache's size, and the configs
it refuses. Identity under batching, chunking, prefix hits and preemption is checked in
batch-invariant mode by test_batching_invariance.py."""
import json
import shutil

import pytest
import torch

from near_tie import assert_equal_up_to_near_ties
from test_hf_parity import assert_parity, run_ours
from vllm import LLM, SamplingParams
from vllm.config import ConfigError
from vllm.engine.arg_utils import EngineArgs

PROMPT_LENGTHS = (3, 7, 12, 20, 33, 40, 55, 64)


def random_prompts(lengths=PROMPT_LENGTHS, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=generator).tolist() for n in lengths]


def make_llm(folder: str, tokenizer: str, **kwargs) -> LLM:
    return LLM(folder, tokenizer=tokenizer, max_model_len=256, **kwargs)


def hf_model(folder: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", ["v3", "v3_no_q_lora", "v3_yarn", "v2", "v3_moe",
                                     "v3_moe_all_yarn", "v2_moe", "v2_moe_greedy"])
def test_batch_matches_transformers(tiny_deepseek, demo_model_dir, variant):
    folder = tiny_deepseek(variant)
    prompts = random_prompts()
    ours = run_ours(make_llm(folder, demo_model_dir), prompts)
    assert_parity(ours, hf_model(folder), prompts, min_identical=0.9)


def test_single_requests_match_transformers(tiny_deepseek, demo_model_dir):
    folder = tiny_deepseek("v3_rope_halves")
    llm, reference = make_llm(folder, demo_model_dir), hf_model(folder)
    for prompt in random_prompts((5, 30), seed=2):
        assert_parity(run_ours(llm, [prompt]), reference, [prompt], min_identical=0.9)


def test_bfloat16_matches_transformers(tiny_deepseek, demo_model_dir):
    """--dtype bfloat16: weights, activations and the latent cache (the router stays
    float32, as in transformers); both sides round differently, so the top-5 rule
    decides."""
    from transformers import AutoModelForCausalLM
    folder = tiny_deepseek("v3")
    prompts = random_prompts((9, 33), seed=2)
    ours = run_ours(make_llm(folder, demo_model_dir, dtype="bfloat16"), prompts)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert_parity(ours, reference, prompts, min_identical=0.5, logprob_atol=0.1)


def greedy_completions(llm: LLM, prompts) -> list:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0] for o in outputs]


def test_chunked_context_prefill_gives_the_same_tokens(tiny_deepseek, demo_model_dir,
                                                       monkeypatch):
    """--additional-config '{"chunked_prefill_for_mla": true}': prompts prefilled in chunks
    of 24 tokens over a cached context expanded 7 latents at a time give the tokens of
    one-shot prefills (near-tie rule: the two paths round differently)."""
    from vllm.attention.backends.cpu_mla import CPUMLAImpl
    monkeypatch.setattr(CPUMLAImpl, "context_chunk_tokens", 7)
    folder = tiny_deepseek("v3")
    prompts = random_prompts((40, 64, 90), seed=3)
    reference = greedy_completions(make_llm(folder, demo_model_dir), prompts)
    chunked = make_llm(folder, demo_model_dir, max_num_batched_tokens=24,
                       additional_config={"chunked_prefill_for_mla": True})
    layers = [m for m in chunked.llm_engine.engine_core.executor.worker.model_runner
              .attention_layers().values()]
    assert all(layer.impl.chunked_context for layer in layers)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    assert_equal_up_to_near_ties(greedy_completions(chunked, prompts), reference, params,
                                 min_compared=0.9)


def test_moe_chunked_prefill_and_prefix_hits_give_the_same_tokens(tiny_deepseek,
                                                                  demo_model_dir):
    """MoE layers after a dense one: prompts prefilled in 16-token chunks, then again from
    the prefix cache, give the tokens of one-shot prefills (near-tie rule)."""
    folder = tiny_deepseek("v3_moe")
    prompts = random_prompts((40, 64, 90), seed=4)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    reference = greedy_completions(make_llm(folder, demo_model_dir,
                                            enable_prefix_caching=False), prompts)
    llm = make_llm(folder, demo_model_dir, max_num_batched_tokens=16)
    assert_equal_up_to_near_ties(greedy_completions(llm, prompts), reference, params,
                                 min_compared=0.9)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                           use_tqdm=False)
    assert min(o.num_cached_tokens for o in outputs) >= 32  # prefix hits this time
    assert_equal_up_to_near_ties([o.outputs[0] for o in outputs], reference, params,
                                 min_compared=0.9)
    manager = llm.llm_engine.engine_core.kv_cache_manager
    assert manager.get_num_free_blocks() == manager.num_blocks


def test_kv_cache_bytes_per_block_are_the_latent(tiny_deepseek, demo_model_dir):
    llm = make_llm(tiny_deepseek("v3"), demo_model_dir, block_size=16)
    core = llm.llm_engine.engine_core
    runner = core.executor.worker.model_runner
    config = runner.model_config.hf_config
    expected = config.num_hidden_layers * 16 * (config.kv_lora_rank + config.qk_rope_head_dim) * 4
    assert runner.kv_cache_bytes_per_block() == expected
    assert runner.model_config.kv_cache_elements_per_token == 32 + 8
    cache = runner.kv_caches["model.layers.0.self_attn.attn"]
    assert tuple(cache.shape) == (core.kv_cache_manager.num_blocks, 16, 40)


def edited_copy(tmp_path, folder: str, **changes) -> str:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize("changes, message", [
    ({"rope_scaling": None, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
     "rope_type"),
    ({"v_head_dim": None}, "v_head_dim"),
    ({"moe_layer_freq": 2}, "moe_layer_freq"),
    ({"first_k_dense_replace": 0, "topk_group": 5}, "topk_group"),
    ({"first_k_dense_replace": 0, "num_experts_per_tok": 9}, "top_k"),
])
def test_bad_configs_are_refused_in_one_line(tmp_path, tiny_deepseek, demo_model_dir,
                                             changes, message):
    folder = edited_copy(tmp_path, tiny_deepseek("v3"), **changes)
    with pytest.raises(ValueError, match=message) as error:
        EngineArgs(model=folder, tokenizer=demo_model_dir).create_engine_config()
    assert "\n" not in str(error.value)


PUSH_PRODUCER = {"kv_connector": "PushConnector", "kv_role": "kv_producer"}


def test_kv_transfer_is_accepted_for_mla(tiny_deepseek, demo_model_dir):
    """The latent cache moves whole (PD end to end: tests/distributed/kv_transfer/
    test_kvt_pd_mla.py)."""
    config = EngineArgs(model=tiny_deepseek("v3"), tokenizer=demo_model_dir,
                        kv_transfer_config=PUSH_PRODUCER).create_engine_config()
    units = config.model_config.cache_units
    assert (units.kind, units.count, units.size, units.planes) == ("latent", 1, 32 + 8, 1)


def test_kv_transfer_is_refused_where_the_backend_cannot_move_latents(
        tiny_deepseek, demo_model_dir, monkeypatch):
    from vllm.platforms import current_platform
    monkeypatch.setattr(current_platform.get_attn_backend_cls(), "latent_transfer", False)
    args = EngineArgs(model=tiny_deepseek("v3"), tokenizer=demo_model_dir,
                      kv_transfer_config=PUSH_PRODUCER)
    with pytest.raises(ConfigError, match="cannot transfer an MLA latent cache") as error:
        args.create_engine_config()
    assert "\n" not in str(error.value)


def test_tensor_parallel_split_checks_heads(tiny_deepseek, demo_model_dir):
    """The 4 query heads split by head (the latent is replicated): 3 ranks would need
    uneven expert rows (moe_intermediate_size 32), 8 ranks more ranks than heads."""
    for tp, field in ((3, "intermediate_size"), (8, "attention heads")):
        args = EngineArgs(model=tiny_deepseek("v3"), tokenizer=demo_model_dir,
                          tensor_parallel_size=tp)
        with pytest.raises(ConfigError, match=field):
            args.create_engine_config()
