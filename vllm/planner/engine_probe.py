"""Timing single engine steps of chosen shapes, in this process.

The probe drives an `EngineCore` directly. A decode at context C needs C tokens of KV in
the cache, but not their values: a request is handed to the scheduler with
`num_computed_tokens = C - 1` (the path a request takes when its KV arrived from a prefill
instance), so setting up a batch of long decodes costs one token each, not a prefill.
The cache is zero-filled, so those steps read real memory and compute real numbers.
"""
import itertools
import time
from typing import Optional

import torch

from vllm.core.request import Request
from vllm.sampling_params import SamplingParams

PROBE_TOKEN_ID = 100  # any ordinary token: what the prompts say does not change the cost


class EngineProbe:
    """An in-process engine core whose step times can be measured by shape."""

    def __init__(self, model: str, max_num_seqs: int, max_model_len: int,
                 num_blocks: int, dtype: str = "float32"):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.engine.core import EngineCore
        args = EngineArgs(model=model, dtype=dtype, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_model_len, max_model_len=max_model_len,
                          enable_prefix_caching=False, num_gpu_blocks_override=num_blocks)
        self.vllm_config = args.create_engine_config("engine")
        self.core = EngineCore(self.vllm_config)
        self._ids = itertools.count()
        self._threads_before = torch.get_num_threads()

    def set_threads(self, num_threads: int) -> None:
        torch.set_num_threads(num_threads)

    def close(self) -> None:
        """Shut the engine down and give torch its thread count back."""
        self.core.shutdown()
        torch.set_num_threads(self._threads_before)

    def time_prefill(self, prompt_lens: list[int], repeats: int) -> float:
        """Fastest of `repeats` steps that each prefill these prompts whole, together (the
        minimum: other processes on the machine only ever add time)."""
        samples = []
        for _ in range(repeats):
            for prompt_len in prompt_lens:
                self._add(prompt_len, max_tokens=1)
            samples.append(self._timed_step())
            self._drain()
        return min(samples)

    def time_decode(self, batch_size: int, context_len: int, steps: int,
                    prefill_len: Optional[int] = None) -> float:
        """Fastest of `steps` steps decoding `batch_size` requests at ~`context_len` tokens,
        each with a whole prefill of `prefill_len` tokens in the same step when given."""
        for _ in range(batch_size):
            self._add(context_len, max_tokens=steps + 2, computed=context_len - 1)
        self.core.step()  # the last prompt token of each: now they all decode
        samples = []
        for _ in range(steps):
            if prefill_len:
                self._add(prefill_len, max_tokens=1)
            samples.append(self._timed_step())
        self._drain()
        return min(samples)

    def _add(self, prompt_len: int, max_tokens: int, computed: int = 0) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        request = Request(f"probe-{next(self._ids)}", [PROBE_TOKEN_ID] * prompt_len, params,
                          eos_token_ids=None)
        request.num_computed_tokens = computed
        self.core.add_request(request)

    def _timed_step(self) -> float:
        start = time.perf_counter()
        self.core.step()
        return time.perf_counter() - start

    def _drain(self) -> None:
        while self.core.has_unfinished_requests():
            self.core.step()
