"""Synchronous engine for offline use: processor + engine core + output processor in one process."""
import itertools
from typing import Optional

from vllm.engine.arg_utils import EngineArgs
from vllm.engine.core import EngineCore
from vllm.engine.output_processor import OutputKind, OutputProcessor, ParentRequest
from vllm.engine.processor import Processor, PromptType
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.tokenizer import get_tokenizer


class LLMEngine:

    def __init__(self, engine_args: EngineArgs, usage_context: str = "engine"):
        self.vllm_config = engine_args.create_engine_config(usage_context)
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
        prepared = []
        for request_id, prompt, sampling_params in zip(request_ids, prompts, params):
            text, token_ids = self.processor.parse_prompt(prompt)
            children = self.processor.make_requests(request_id, token_ids, sampling_params)
            prepared.append((request_id, text, token_ids, sampling_params, children))
        for request_id, text, token_ids, sampling_params, children in prepared:
            parent = ParentRequest(request_id, len(children)) if sampling_params.n > 1 else None
            for index, request in enumerate(children):
                self.output_processor.add_request(request.request_id, text, token_ids,
                                                  request.sampling_params, output_kind,
                                                  parent, index)
                self.engine_core.add_request(request)
            self._children[request_id] = [r.request_id for r in children]

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

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def num_free_blocks(self) -> int:
        return self.engine_core.kv_cache_manager.get_num_free_blocks()
