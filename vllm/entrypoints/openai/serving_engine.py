"""What the completion and chat endpoints share: model names, sampling parameters, length
checks, usage, SSE framing, merging per-prompt streams and cancelling on disconnect."""
import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Optional, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from vllm.engine.async_llm import AsyncLLM
from vllm.engine.processor import ParsedPrompt, PromptType
from vllm.entrypoints.openai.errors import OpenAIError, from_exception, model_not_found
from vllm.entrypoints.openai.protocol import (ChatMessage, PromptTokenUsageInfo, SamplingRequest,
                                              UsageInfo)
from vllm.entrypoints.openai.request_limits import (RequestLimits, check_prompt_text,
                                                    check_sampling_fields)
from vllm.sampling_params import SamplingParams

T = TypeVar("T")
TOKEN_ID_PREFIX = "token_id:"

_SAMPLING_FIELDS = ("n", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                    "stop_token_ids", "ignore_eos", "min_tokens", "presence_penalty",
                    "frequency_penalty", "repetition_penalty", "logit_bias",
                    "skip_special_tokens", "spaces_between_special_tokens",
                    "include_stop_str_in_output")
_RESERVED_TEMPLATE_KWARGS = {"conversation", "tokenize", "return_dict", "tools", "documents",
                             "add_generation_prompt", "chat_template"}


class OpenAIServing:
    """Base of the serving classes: one engine, the names it answers to."""

    def __init__(self, engine: AsyncLLM, served_model_names: list[str],
                 limits: Optional[RequestLimits] = None):
        self.engine = engine
        self.served_model_names = served_model_names
        self.max_model_len = engine.model_config.max_model_len
        self.limits = limits or RequestLimits()

    @property
    def tokenizer(self):
        return self.engine.get_tokenizer()

    def token_text(self, request: SamplingRequest, token_id: int, logprob) -> str:
        """How a logprobs entry names a token: "token_id:<id>" when the request asks for
        ids (vLLM's return_tokens_as_token_ids), else its decoded text."""
        if request.return_tokens_as_token_ids:
            return f"{TOKEN_ID_PREFIX}{token_id}"
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.tokenizer.decode([token_id])

    def resolve_model_name(self, requested: Optional[str]) -> str:
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise model_not_found(requested)
        return requested

    def check_limits(self, request: SamplingRequest, num_prompts: int = 1) -> None:
        check_sampling_fields(request, self.limits, num_prompts)

    def check_prompt_text(self, text: str, param: str = "prompt") -> None:
        check_prompt_text(text, self.limits, param)

    def check_engine(self) -> None:
        try:
            self.engine.check_health()
        except Exception as error:
            raise from_exception(error) from None

    def render_chat(self, messages: list[ChatMessage], add_generation_prompt: Optional[bool],
                    template_kwargs: Optional[dict]) -> tuple[str, list[int]]:
        """Apply the tokenizer's chat template; return (prompt text, token ids)."""
        tokenizer = self.tokenizer
        if not messages:
            raise OpenAIError("'messages' must not be empty", param="messages")
        if not getattr(tokenizer, "chat_template", None):
            raise OpenAIError("the model's tokenizer has no chat template; use /v1/completions",
                              param="messages")
        reserved = sorted(set(template_kwargs or {}) & _RESERVED_TEMPLATE_KWARGS)
        if reserved:
            raise OpenAIError(f"chat_template_kwargs may not set {reserved[0]!r}",
                              param="chat_template_kwargs")
        conversation = [_template_message(m) for m in messages]
        try:
            text = tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt is not
                False, **(template_kwargs or {}))
        except Exception as error:  # jinja raises many kinds; all are the request's fault
            raise OpenAIError(f"cannot apply the chat template: {error}",
                              param="messages") from None
        self.check_prompt_text(text, "messages")
        return text, tokenizer.encode(text, add_special_tokens=False)

    def abort_all(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.engine.abort(request_id)

    def streaming_response(self, chunks: AsyncIterator[str],
                           request_ids: list[str]) -> StreamingResponse:
        """SSE response; when it ends for any reason (a disconnect too), abort what is left."""
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 background=BackgroundTask(self.abort_all, request_ids))

    def sampling_params(self, request: SamplingRequest, max_tokens: Optional[int],
                        logprobs: Optional[int], best_of: Optional[int] = None
                        ) -> SamplingParams:
        """The request's sampling parameters over the model's generation defaults."""
        return build_sampling_params(request, max_tokens, logprobs, best_of,
                                     self.engine.model_config.sampling_defaults)

    def parse_prompt(self, prompt: PromptType, max_tokens: Optional[int],
                     param: str) -> ParsedPrompt:
        """The engine's one parse of a prompt (the engine takes the result as it is): a 400
        naming `param` when it is empty, out of vocabulary or too long."""
        try:
            parsed = self.engine.processor.parse_prompt(prompt)
        except ValueError as error:
            raise OpenAIError(str(error), param=param) from None
        if not parsed.token_ids:
            raise OpenAIError(f"'{param}' must not be empty", param=param)
        self.check_length(len(parsed.token_ids), max_tokens)
        return parsed

    def check_length(self, num_prompt_tokens: int, max_tokens: Optional[int]) -> None:
        if num_prompt_tokens >= self.max_model_len:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt has {num_prompt_tokens} tokens (at least one token must be "
                "generated). Please reduce the length of the prompt.", param="prompt")
        if max_tokens is not None and num_prompt_tokens + max_tokens > self.max_model_len:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} "
                f"in the prompt, {max_tokens} in the completion). Please reduce the length of "
                "the prompt or completion.", param="max_tokens")


def _template_message(message: ChatMessage) -> dict[str, str]:
    entry = {"role": message.role, "content": message.text()}
    if message.name is not None:
        entry["name"] = message.name
    return entry


def build_sampling_params(request: SamplingRequest, max_tokens: Optional[int],
                          logprobs: Optional[int], best_of: Optional[int] = None,
                          defaults: Optional[dict[str, Any]] = None) -> SamplingParams:
    """SamplingParams from a request, `defaults` (the model's generation config) filling
    the fields it leaves unset; an invalid value is a 400 naming it."""
    kwargs: dict[str, Any] = dict(defaults or {})
    kwargs.update((name, getattr(request, name)) for name in _SAMPLING_FIELDS
                  if getattr(request, name) is not None)
    if logprobs is not None:
        kwargs["logprobs"] = logprobs
    if best_of is not None:
        kwargs["best_of"] = best_of
    try:
        return SamplingParams(max_tokens=max_tokens, **kwargs)
    except ValueError as error:
        raise from_exception(error) from None


def make_usage(num_prompt_tokens: int, num_completion_tokens: int,
               num_cached_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=num_completion_tokens,
                     total_tokens=num_prompt_tokens + num_completion_tokens,
                     prompt_tokens_details=PromptTokenUsageInfo(cached_tokens=num_cached_tokens))


def sse_event(payload: Any) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(error: BaseException) -> str:
    return sse_event(from_exception(error).to_body())


async def merge_async_iterators(iterators: list[AsyncIterator[T]]
                                ) -> AsyncIterator[tuple[int, T]]:
    """Yield (index, item) from several iterators as items arrive; stopping early (or the
    first failure) cancels the rest, which aborts their requests."""
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((index, item))
            await queue.put((index, finished))
        except Exception as error:
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is finished:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_until_disconnected(raw_request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (so its requests are aborted) if the client goes away."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise OpenAIError("the client disconnected", 499, code="client_disconnected")
    return work_task.result()


async def _wait_for_disconnect(raw_request: Request) -> None:
    while True:
        message = await raw_request.receive()
        if message["type"] == "http.disconnect":
            return
