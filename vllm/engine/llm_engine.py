"""Synchronous engine for offline use: processor + engine core + output processor in one process."""
import itertools
from typing import Optional

from vllm.engine.admission import admit, prepare
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.core import EngineCore
from vllm.engine.output_processor import OutputKind, OutputProcessor
from vllm.engine.processor import Processor, PromptType
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.tokenizer import get_tokenizer


class LLMEngine:

    def __init__(self, engine_args: EngineArgs, usage_context: str = "engine"):
        self.vllm_config = engine_args.create_engine_config(usage_context)
        if self.vllm_config.parallel_config.data_parallel_size > 1:
            raise ValueError("data_parallel_size > 1 is served only (vllm serve); the "
                             "offline engine runs one engine core")
        model_config = self.vllm_config.model_config
        self.tokenizer = get_tokenizer(model_config.tokenizer,
                                       trust_remote_code=model_config.trust_remote_code)
        self.processor = Processor(model_config, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.engine_core = EngineCore(self.vllm_config)
        self._children: dict[str, list[str]] = {}

    def add_requests(self, request_ids: list[str], prompts: list[PromptType],
                     params: list[SamplingParams],
                     output_kind: OutputKind = OutputKind.FINAL_ONLY) -> None:
        """Validates every prompt first, so a bad one rejects the batch before any work."""
        admissions = [prepare(self.processor, request_id, prompt, sampling_params)
                      for request_id, prompt, sampling_params in zip(request_ids, prompts,
                                                                      params)]
        for admission in admissions:
            admit(admission, self.output_processor, output_kind,
                  self.engine_core.add_engine_request)
            self._children[admission.request_id] = admission.child_ids

    def abort_request(self, request_ids: list[str]) -> None:
        child_ids = list(itertools.chain.from_iterable(
            self._children.pop(r, [r]) for r in request_ids))
        self.engine_core.abort_requests(child_ids)
        self.output_processor.abort_requests(child_ids)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        core_outputs = self.engine_core.step()
        outputs, stopped = self.output_processor.process_outputs(core_outputs)
        if stopped:
            self.engine_core.abort_requests(stopped)
        for output in outputs:
            if output.finished:
                self._children.pop(output.request_id, None)
        return outputs

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def num_free_blocks(self) -> int:
        return self.engine_core.kv_cache_manager.get_num_free_blocks()
