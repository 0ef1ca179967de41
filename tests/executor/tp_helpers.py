"""Helpers for the tensor-parallel executor tests: tiny-model engines and process checks."""
import time

import psutil

from near_tie import assert_equal_up_to_near_ties
from vllm import LLM, SamplingParams

# Logprobs for the near-tie rule (tests/near_tie.py): TP=N splits every sum, so its tokens
# match TP=1's up to a split where the reference was nearly tied.
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True,
                        logprobs=2)
TOKEN_PROMPTS = [{"prompt_token_ids": ids} for ids in
                 ([5, 17, 42, 99, 3], [7, 8, 9, 10, 11, 12, 13] * 5, [300, 2, 400])]
DEMO_PROMPTS = ["The capital of France is", "def quicksort(items):",
                "List three uses of copper:"]
DEMO_GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
DEMO_SEEDED = SamplingParams(temperature=0.8, seed=7, max_tokens=16, ignore_eos=True,
                             logprobs=2)


def make_tp_llm(model: str, tokenizer: str, tp: int, backend=None, **kwargs) -> LLM:
    kwargs.setdefault("num_gpu_blocks_override", 64)
    return LLM(model, tokenizer=tokenizer, max_model_len=256, tensor_parallel_size=tp,
               distributed_executor_backend=backend, **kwargs)


def token_ids(llm: LLM, params: SamplingParams, prompts=TOKEN_PROMPTS) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def completions(llm: LLM, params: SamplingParams, prompts=TOKEN_PROMPTS) -> list:
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def assert_same_answers(llm: LLM, params: SamplingParams, reference: list,
                        prompts=TOKEN_PROMPTS) -> None:
    """`llm`'s completions equal the TP=1 `reference` under the near-tie rule."""
    assert_equal_up_to_near_ties(completions(llm, params, prompts), reference, params)


def executor_of(llm: LLM):
    return llm.llm_engine.engine_core.executor


def pid_is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pids, timeout_s: float = 10.0) -> list[int]:
    """The pids still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [pid for pid in pids if pid_is_running(pid)]
        if not running:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if pid_is_running(pid)]
