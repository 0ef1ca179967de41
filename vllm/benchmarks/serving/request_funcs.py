"""Streaming one request to an OpenAI-compatible endpoint and timing its chunks."""
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from vllm.benchmarks.serving.sse import iter_sse_data


@dataclass
class RequestInput:
    """What to send for one benchmark request."""
    prompt: str
    api_url: str
    prompt_len: int
    output_len: int
    model: str
    temperature: float = 0.0
    ignore_eos: bool = False


@dataclass
class RequestOutput:
    """What was measured for one request; times are in seconds."""
    success: bool = False
    generated_text: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    error: str = ""


class StreamError(Exception):
    """The server reported an error inside the event stream."""


def completions_payload(request: RequestInput) -> dict:
    return {"prompt": request.prompt, **_common_payload(request)}


def chat_payload(request: RequestInput) -> dict:
    messages = [{"role": "user", "content": request.prompt}]
    return {"messages": messages, **_common_payload(request)}


def _common_payload(request: RequestInput) -> dict:
    payload = {
        "model": request.model,
        "max_tokens": request.output_len,
        "temperature": request.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.ignore_eos:
        payload["ignore_eos"] = True
    return payload


def completions_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    return (choices[0].get("text") or "") if choices else ""


def chat_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


@dataclass(frozen=True)
class Backend:
    """How one API flavour builds its request body and reads text out of a chunk."""
    build_payload: Callable[[RequestInput], dict]
    chunk_text: Callable[[dict], str]


BACKENDS = {
    "vllm": Backend(completions_payload, completions_text),
    "openai": Backend(completions_payload, completions_text),
    "openai-chat": Backend(chat_payload, chat_text),
}


def auth_headers() -> dict[str, str]:
    """Bearer authorization from OPENAI_API_KEY when it is set."""
    api_key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def send_request(session: aiohttp.ClientSession, backend: Backend,
                       request: RequestInput) -> RequestOutput:
    """Post one streaming request and time it; failures are returned, not raised."""
    output = RequestOutput(prompt_len=request.prompt_len)
    start = time.perf_counter()
    try:
        async with session.post(request.api_url, json=backend.build_payload(request),
                                headers=auth_headers()) as response:
            if response.status != 200:
                body = await response.text()
                output.error = f"HTTP {response.status} {response.reason}: {body}"
                return output
            await _read_stream(response, backend, output, start)
    except Exception as exc:  # noqa: BLE001 - any failure is a failed request
        output.error = f"{type(exc).__name__}: {exc}"
        return output
    output.success = output.ttft > 0.0
    if not output.success:
        output.error = "the stream ended without any generated text"
    return output


async def _read_stream(response: aiohttp.ClientResponse, backend: Backend,
                       output: RequestOutput, start: float) -> None:
    last_text_time = start
    async for data in iter_sse_data(response.content.iter_any()):
        if data.strip() == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise StreamError(json.dumps(chunk["error"]))
        text = backend.chunk_text(chunk)
        if text:
            now = time.perf_counter()
            _record_text_timing(output, start, last_text_time, now)
            last_text_time = now
            output.generated_text += text
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            output.output_tokens = usage["completion_tokens"]
    output.latency = time.perf_counter() - start


def _record_text_timing(output: RequestOutput, start: float, previous: float,
                        now: float) -> None:
    if output.ttft == 0.0:
        output.ttft = now - start
    else:
        output.itl.append(now - previous)
