"""POST /v1/completions: one engine request per prompt, n choices each, streamed or not."""
import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from vllm.engine.processor import ParsedPrompt
from vllm.entrypoints.openai.errors import OpenAIError
from vllm.entrypoints.openai.protocol import (CompletionChoice, CompletionLogprobs,
                                              CompletionRequest, CompletionResponse, request_id_for)
from vllm.entrypoints.openai.serving_engine import (SSE_DONE, OpenAIServing, make_usage,
                                                    merge_async_iterators,
                                                    run_until_disconnected, sse_error,
                                                    sse_event)
from vllm.outputs import CompletionOutput, RequestOutput


def _prompt_list(prompt) -> list:
    """One prompt (a string or token ids) or a batch of them, as a batch."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return [prompt]
    return prompt


@dataclass
class _Choice:
    text: str = ""
    num_tokens: int = 0
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Any = None


@dataclass
class _PromptResult:
    prompt_text: Optional[str]
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    kv_transfer_params: Optional[dict] = None
    choices: dict[int, _Choice] = field(default_factory=dict)


class OpenAIServingCompletion(OpenAIServing):

    async def create_completion(self, request: CompletionRequest, raw_request: Request):
        model_name = self.resolve_model_name(request.model)
        self.check_engine()
        if request.echo and request.logprobs is not None:
            raise OpenAIError("echo with logprobs needs prompt logprobs, which are not "
                              "supported yet", param="echo")
        self.check_limits(request, len(_prompt_list(request.prompt)))
        max_tokens = self._max_tokens(request)
        params = self.sampling_params(request, max_tokens, request.logprobs, request.best_of)
        prompts = await asyncio.to_thread(self._tokenize_prompts, request.prompt, max_tokens)
        request_id = request_id_for(raw_request, "cmpl")
        request_ids, generators = self._start(request, request_id, prompts, params)
        results = [_PromptResult(self._prompt_text(text, ids), len(ids)) for text, ids in prompts]
        stream = merge_async_iterators(generators)
        if request.stream:
            chunks = self._stream(request, request_id, model_name, stream, results, params.n)
            return self.streaming_response(chunks, request_ids)
        try:
            await run_until_disconnected(raw_request, self._collect(request, stream, results))
        finally:
            self.abort_all(request_ids)
        return JSONResponse(self._response(request_id, model_name, results,
                                           params.n).model_dump())

    def _start(self, request: CompletionRequest, request_id: str, prompts, params):
        """Add one engine request per prompt; all or none (a failure aborts the others)."""
        request_ids = [f"{request_id}-{index}" for index in range(len(prompts))]
        try:
            generators = [self.engine.generate(prompt, params, rid, request.kv_transfer_params)
                          for rid, prompt in zip(request_ids, prompts)]
        except BaseException:
            self.abort_all(request_ids)
            raise
        return request_ids, generators

    def _max_tokens(self, request: CompletionRequest) -> Optional[int]:
        """The request's max_tokens; unset, the model's default (None: the engine fills it
        in) replaces the protocol's 16."""
        unset = "max_tokens" not in request.model_fields_set
        if unset and self.engine.model_config.default_max_tokens is not None:
            return None
        return request.max_tokens

    def _tokenize_prompts(self, prompt, max_tokens: Optional[int]) -> list[ParsedPrompt]:
        """Each prompt's text and token ids; the first that cannot fit stops the work (run
        off the event loop: a batch of long prompts takes a while)."""
        if isinstance(prompt, list) and not prompt:
            raise OpenAIError("'prompt' must not be an empty list", param="prompt")
        for one in _prompt_list(prompt):
            if isinstance(one, str):
                self.check_prompt_text(one)
        parsed = []
        for one in _prompt_list(prompt):
            parsed.append(self.parse_prompt(one, max_tokens, "prompt"))
        return parsed

    def _prompt_text(self, text: Optional[str], token_ids: list[int]) -> str:
        return text if text is not None else self.tokenizer.decode(token_ids)

    async def _collect(self, request: CompletionRequest, stream, results) -> None:
        async for prompt_index, output in stream:
            self._absorb(request, results[prompt_index], output)

    def _absorb(self, request: CompletionRequest, result: _PromptResult,
                output: RequestOutput) -> list[tuple[int, _Choice]]:
        """Fold one delta into the result; return (choice index, delta) per completion."""
        result.num_cached_tokens = max(result.num_cached_tokens, output.num_cached_tokens or 0)
        if output.kv_transfer_params is not None:
            result.kv_transfer_params = output.kv_transfer_params
        deltas = []
        for completion in output.outputs:
            choice = result.choices.get(completion.index)
            echo = ""
            if choice is None:
                choice = result.choices[completion.index] = _Choice()
                echo = result.prompt_text if request.echo else ""
            logprobs = None
            if request.logprobs is not None and completion.logprobs is not None:
                offset = len(choice.text) + len(echo)
                logprobs = self._format_logprobs(request, completion, offset)
            delta = _Choice(echo + completion.text, len(completion.token_ids), logprobs,
                            completion.finish_reason, completion.stop_reason)
            choice.text += delta.text
            choice.num_tokens += delta.num_tokens
            if logprobs is not None:
                choice.logprobs = _extend_logprobs(choice.logprobs, logprobs)
            choice.finish_reason = completion.finish_reason
            choice.stop_reason = completion.stop_reason
            deltas.append((completion.index, delta))
        return deltas

    def _format_logprobs(self, request: CompletionRequest, completion: CompletionOutput,
                         offset: int) -> CompletionLogprobs:
        result = CompletionLogprobs()
        for token_id, entry in zip(completion.token_ids, completion.logprobs):
            sampled = entry.get(token_id)
            token = self.token_text(request, token_id, sampled)
            result.text_offset.append(offset)
            result.tokens.append(token)
            result.token_logprobs.append(sampled.logprob if sampled is not None else None)
            result.top_logprobs.append({self.token_text(request, tid, lp): lp.logprob
                                        for tid, lp in entry.items()})
            offset += len(token)
        return result

    def _response(self, request_id: str, model_name: str, results: list[_PromptResult],
                  n: int) -> CompletionResponse:
        choices = []
        for prompt_index, result in enumerate(results):
            for index in sorted(result.choices):
                choice = result.choices[index]
                choices.append(CompletionChoice(
                    index=prompt_index * n + index, text=choice.text, logprobs=choice.logprobs,
                    finish_reason=choice.finish_reason, stop_reason=choice.stop_reason))
        kv_params = next((r.kv_transfer_params for r in results if r.kv_transfer_params), None)
        return CompletionResponse(id=request_id, model=model_name, choices=choices,
                                  usage=_usage(results), kv_transfer_params=kv_params)

    async def _stream(self, request: CompletionRequest, request_id: str, model_name: str,
                      stream, results: list[_PromptResult], n: int) -> AsyncIterator[str]:
        try:
            async for prompt_index, output in stream:
                result = results[prompt_index]
                for index, delta in self._absorb(request, result, output):
                    if not (delta.text or delta.logprobs or delta.finish_reason):
                        continue
                    choice = CompletionChoice(
                        index=prompt_index * n + index, text=delta.text,
                        logprobs=delta.logprobs, finish_reason=delta.finish_reason,
                        stop_reason=delta.stop_reason)
                    chunk = CompletionResponse(
                        id=request_id, model=model_name, choices=[choice],
                        kv_transfer_params=result.kv_transfer_params
                        if delta.finish_reason else None)
                    yield sse_event(chunk.model_dump_json())
            if request.include_usage_in_stream:
                final = CompletionResponse(id=request_id, model=model_name, choices=[],
                                           usage=_usage(results))
                yield sse_event(final.model_dump_json())
        except Exception as error:
            yield sse_error(error)
        finally:
            await stream.aclose()
        yield SSE_DONE


def _extend_logprobs(total: Optional[CompletionLogprobs],
                     delta: CompletionLogprobs) -> CompletionLogprobs:
    if total is None:
        return delta.model_copy(deep=True)
    total.text_offset += delta.text_offset
    total.tokens += delta.tokens
    total.token_logprobs += delta.token_logprobs
    total.top_logprobs += delta.top_logprobs
    return total


def _usage(results: list[_PromptResult]):
    return make_usage(sum(r.num_prompt_tokens for r in results),
                      sum(c.num_tokens for r in results for c in r.choices.values()),
                      sum(r.num_cached_tokens for r in results))
