"""POST /v1/chat/completions: render the tokenizer's chat template, then generate."""
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from vllm.entrypoints.openai.errors import OpenAIError
from vllm.entrypoints.openai.protocol import (ChatChoiceLogprobs, ChatCompletionChoice,
                                              ChatCompletionChunk, ChatCompletionRequest,
                                              ChatCompletionResponse, ChatResponseMessage,
                                              ChatStreamChoice, ChatTokenLogprob, ChatTopLogprob,
                                              DeltaMessage, request_id_for)
from vllm.entrypoints.openai.serving_engine import (SSE_DONE, OpenAIServing, make_usage,
                                                    run_until_disconnected, sse_error, sse_event)
from vllm.outputs import CompletionOutput, RequestOutput


@dataclass
class _Choice:
    text: str = ""
    num_tokens: int = 0
    logprobs: Optional[list[ChatTokenLogprob]] = None
    finish_reason: Optional[str] = None
    stop_reason: Any = None


@dataclass
class _ChatResult:
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    kv_transfer_params: Optional[dict] = None
    choices: dict[int, _Choice] = field(default_factory=dict)

    def usage(self):
        return make_usage(self.num_prompt_tokens,
                          sum(c.num_tokens for c in self.choices.values()),
                          self.num_cached_tokens)


class OpenAIServingChat(OpenAIServing):

    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Request):
        model_name = self.resolve_model_name(request.model)
        self.check_engine()
        num_logprobs = _num_logprobs(request)
        max_tokens = request.max_completion_tokens
        if max_tokens is None:
            max_tokens = request.max_tokens
        self.check_limits(request)
        params = self.sampling_params(request, max_tokens, num_logprobs)
        text, token_ids = await asyncio.to_thread(
            self.render_chat, request.messages, request.add_generation_prompt,
            request.chat_template_kwargs)
        prompt = self.parse_prompt({"prompt": text, "prompt_token_ids": token_ids}, max_tokens,
                                   "messages")
        request_id = request_id_for(raw_request, "chatcmpl")
        outputs = self.engine.generate(prompt, params, request_id, request.kv_transfer_params)
        result = _ChatResult(len(token_ids))
        if request.stream:
            chunks = self._stream(request, request_id, model_name, outputs, result)
            return self.streaming_response(chunks, [request_id])
        try:
            await run_until_disconnected(raw_request, self._collect(request, outputs, result))
        finally:
            self.abort_all([request_id])
        return JSONResponse(self._response(request_id, model_name, result).model_dump())

    async def _collect(self, request, outputs: AsyncIterator[RequestOutput],
                       result: _ChatResult) -> None:
        async for output in outputs:
            self._absorb(request, result, output)

    def _absorb(self, request: ChatCompletionRequest, result: _ChatResult,
                output: RequestOutput) -> list[tuple[int, _Choice, bool]]:
        """Fold one delta in; return (index, delta, is_first) for each completion in it."""
        result.num_cached_tokens = max(result.num_cached_tokens, output.num_cached_tokens or 0)
        if output.kv_transfer_params is not None:
            result.kv_transfer_params = output.kv_transfer_params
        deltas = []
        for completion in output.outputs:
            first = completion.index not in result.choices
            choice = result.choices.setdefault(completion.index, _Choice())
            logprobs = None
            if request.logprobs and completion.logprobs is not None:
                logprobs = self._format_logprobs(request, completion, request.top_logprobs or 0)
                choice.logprobs = (choice.logprobs or []) + logprobs
            delta = _Choice(completion.text, len(completion.token_ids), logprobs,
                            completion.finish_reason, completion.stop_reason)
            choice.text += delta.text
            choice.num_tokens += delta.num_tokens
            choice.finish_reason = completion.finish_reason
            choice.stop_reason = completion.stop_reason
            deltas.append((completion.index, delta, first))
        return deltas

    def _format_logprobs(self, request: ChatCompletionRequest, completion: CompletionOutput,
                         num_top: int) -> list[ChatTokenLogprob]:
        entries = []
        for token_id, logprobs in zip(completion.token_ids, completion.logprobs):
            sampled = logprobs.get(token_id)
            token = self.token_text(request, token_id, sampled)
            ranked = sorted(logprobs.items(), key=lambda item: item[1].rank or 0)
            top = [ChatTopLogprob(token=self.token_text(request, tid, lp), logprob=lp.logprob,
                                  bytes=list(self.token_text(request, tid, lp).encode()))
                   for tid, lp in ranked if lp.rank is not None and lp.rank <= num_top]
            entries.append(ChatTokenLogprob(
                token=token, logprob=sampled.logprob if sampled else float("-inf"),
                bytes=list(token.encode()), top_logprobs=top))
        return entries

    def _response(self, request_id: str, model_name: str,
                  result: _ChatResult) -> ChatCompletionResponse:
        choices = []
        for index in sorted(result.choices):
            choice = result.choices[index]
            logprobs = ChatChoiceLogprobs(content=choice.logprobs) \
                if choice.logprobs is not None else None
            choices.append(ChatCompletionChoice(
                index=index, message=ChatResponseMessage(content=choice.text),
                logprobs=logprobs, finish_reason=choice.finish_reason,
                stop_reason=choice.stop_reason))
        return ChatCompletionResponse(id=request_id, model=model_name, choices=choices,
                                      usage=result.usage(),
                                      kv_transfer_params=result.kv_transfer_params)

    async def _stream(self, request: ChatCompletionRequest, request_id: str, model_name: str,
                      outputs: AsyncIterator[RequestOutput],
                      result: _ChatResult) -> AsyncIterator[str]:
        def chunk(choices, usage=None, kv_transfer_params=None) -> str:
            return _chunk_json(ChatCompletionChunk(id=request_id, model=model_name,
                                                   choices=choices, usage=usage,
                                                   kv_transfer_params=kv_transfer_params))
        try:
            async for output in outputs:
                for index, delta, first in self._absorb(request, result, output):
                    if first:
                        role = DeltaMessage(role="assistant", content="")
                        yield chunk([ChatStreamChoice(index=index, delta=role)])
                    if not (delta.text or delta.logprobs or delta.finish_reason):
                        continue
                    logprobs = ChatChoiceLogprobs(content=delta.logprobs) \
                        if delta.logprobs is not None else None
                    choice = ChatStreamChoice(
                        index=index, delta=DeltaMessage(content=delta.text), logprobs=logprobs,
                        finish_reason=delta.finish_reason, stop_reason=delta.stop_reason)
                    kv_params = result.kv_transfer_params if delta.finish_reason else None
                    yield chunk([choice], kv_transfer_params=kv_params)
            if request.include_usage_in_stream:
                yield chunk([], usage=result.usage())
        except Exception as error:
            yield sse_error(error)
        finally:
            await outputs.aclose()
        yield SSE_DONE


def _num_logprobs(request: ChatCompletionRequest) -> Optional[int]:
    if request.logprobs:
        return request.top_logprobs or 0
    if request.top_logprobs:
        raise OpenAIError("top_logprobs needs logprobs to be true", param="top_logprobs")
    return None


def _chunk_json(chunk: ChatCompletionChunk) -> str:
    body = chunk.model_dump()
    for choice in body["choices"]:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return sse_event(json.dumps(body, ensure_ascii=False))
