"""Turns engine-core outputs into RequestOutputs: detokenization, stop strings, n > 1."""
import enum
from dataclasses import dataclass, field
from typing import Optional

from vllm.core.messages import EngineCoreOutput
from vllm.engine.detokenizer import IncrementalDetokenizer
from vllm.engine.logprobs import LogprobsProcessor
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams


class OutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class ParentRequest:
    request_id: str
    num_children: int
    finished: dict[int, CompletionOutput] = field(default_factory=dict)


class RequestState:

    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                 params: SamplingParams, tokenizer, output_kind: OutputKind,
                 parent: Optional[ParentRequest], index: int):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.output_kind = output_kind
        self.parent = parent
        self.index = index
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params) \
            if params.detokenize and tokenizer is not None else None
        self.logprobs = LogprobsProcessor.from_params(tokenizer, params)
        self.token_ids: list[int] = []
        self.num_returned_tokens = 0
        self.num_returned_logprobs = 0
        self.num_cached_tokens = 0
        self.kv_transfer_params = None

    def completion(self, finish_reason, stop_reason) -> CompletionOutput:
        delta = self.output_kind == OutputKind.DELTA
        finished = finish_reason is not None
        text = self.detokenizer.get_next_output_text(finished, delta) if self.detokenizer else ""
        token_ids = self.token_ids[self.num_returned_tokens:] if delta else list(self.token_ids)
        logprobs = self.logprobs.logprobs
        if delta and logprobs is not None:
            logprobs = logprobs[self.num_returned_logprobs:]
            self.num_returned_logprobs = len(self.logprobs.logprobs)
        if delta:
            self.num_returned_tokens = len(self.token_ids)
        return CompletionOutput(self.index, text, token_ids, self.logprobs.cumulative_logprob,
                                logprobs, finish_reason, stop_reason)


class OutputProcessor:

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                    params: SamplingParams, output_kind: OutputKind,
                    parent: Optional[ParentRequest] = None, index: int = 0) -> None:
        self.states[request_id] = RequestState(request_id, prompt, prompt_token_ids, params,
                                               self.tokenizer, output_kind, parent, index)

    def has_unfinished_requests(self) -> bool:
        return bool(self.states)

    def abort_requests(self, request_ids) -> None:
        for request_id in request_ids:
            self.states.pop(request_id, None)

    def process_outputs(self, core_outputs: list[EngineCoreOutput]
                        ) -> tuple[list[RequestOutput], list[str]]:
        """Returns the outputs to hand out and the requests a stop string finished."""
        request_outputs, stopped_by_string = [], []
        for core_output in core_outputs:
            state = self.states.get(core_output.request_id)
            if state is None:
                continue
            finish_reason, stop_reason = self._absorb(state, core_output)
            if finish_reason is not None and core_output.finish_reason is None:
                stopped_by_string.append(state.request_id)
            if finish_reason is not None:
                del self.states[state.request_id]
            output = self._make_output(state, finish_reason, stop_reason)
            if output is not None:
                request_outputs.append(output)
        return request_outputs, stopped_by_string

    def _absorb(self, state: RequestState, core_output: EngineCoreOutput):
        finish_reason, stop_reason = core_output.finish_reason, core_output.stop_reason
        state.num_cached_tokens = core_output.num_cached_tokens
        state.kv_transfer_params = core_output.kv_transfer_params
        new_ids = core_output.new_token_ids
        state.token_ids.extend(new_ids)
        for entry in core_output.new_logprobs or []:
            state.logprobs.update(*entry)
        if state.detokenizer is not None:
            stop_terminated = finish_reason == "stop"
            matched = state.detokenizer.update(new_ids, stop_terminated)
            if matched is not None:
                finish_reason, stop_reason = "stop", matched
        return finish_reason, stop_reason

    def _make_output(self, state: RequestState, finish_reason, stop_reason
                     ) -> Optional[RequestOutput]:
        finished = finish_reason is not None
        if state.output_kind == OutputKind.FINAL_ONLY and not finished:
            return None
        completion = state.completion(finish_reason, stop_reason)
        parent = state.parent
        if parent is None:
            return self._request_output(state, state.request_id, [completion], finished)
        if state.output_kind != OutputKind.FINAL_ONLY:
            all_done = finished and len(parent.finished) + 1 == parent.num_children
            if finished:
                parent.finished[state.index] = completion
            return self._request_output(state, parent.request_id, [completion], all_done)
        parent.finished[state.index] = completion
        if len(parent.finished) < parent.num_children:
            return None
        outputs = [parent.finished[i] for i in sorted(parent.finished)]
        return self._request_output(state, parent.request_id, outputs, True)

    @staticmethod
    def _request_output(state: RequestState, request_id: str,
                        outputs: list[CompletionOutput], finished: bool) -> RequestOutput:
        return RequestOutput(request_id, state.prompt, state.prompt_token_ids,
                             state.logprobs.prompt_logprobs, outputs, finished,
                             num_cached_tokens=state.num_cached_tokens,
                             kv_transfer_params=state.kv_transfer_params)
