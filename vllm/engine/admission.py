"""Admitting one request, as LLMEngine and AsyncLLM both do: parse, split, register, add."""
from dataclasses import dataclass
from typing import Callable, Optional, Union

from vllm.core.messages import EngineCoreRequest
from vllm.engine.output_processor import OutputKind, OutputProcessor, ParentRequest
from vllm.engine.processor import ParsedPrompt, Processor, PromptType
from vllm.sampling_params import SamplingParams


@dataclass
class Admission:
    """A validated request: its prompt, parsed once, and its children's wire messages."""

    request_id: str
    prompt: ParsedPrompt
    params: SamplingParams
    children: list[EngineCoreRequest]

    @property
    def child_ids(self) -> list[str]:
        return [child.request_id for child in self.children]


def prepare(processor: Processor, request_id: str, prompt: Union[PromptType, ParsedPrompt],
            params: SamplingParams, kv_transfer_params: Optional[dict] = None) -> Admission:
    """Parse (a ParsedPrompt, parsed by the front end, is taken as it is) and split into n
    children; bad input raises InvalidRequestError here, before anything is registered."""
    parsed = prompt if isinstance(prompt, ParsedPrompt) else processor.parse_prompt(prompt)
    children = processor.make_requests(request_id, parsed.token_ids, params,
                                       kv_transfer_params)
    return Admission(request_id, parsed, params, children)


def admit(admission: Admission, output_processor: OutputProcessor, output_kind: OutputKind,
          add_to_core: Callable[[EngineCoreRequest], None]) -> None:
    """Register every child with the output processor, then hand it to the engine core."""
    parent = None
    if admission.params.n > 1:
        parent = ParentRequest(admission.request_id, len(admission.children))
    text, token_ids = admission.prompt
    for index, child in enumerate(admission.children):
        output_processor.add_request(child.request_id, text, token_ids, child.sampling_params,
                                     output_kind, parent, index)
        add_to_core(child)
