"""A tiny OpenAI-compatible streaming server with injected delays, for benchmark tests.

Run: python fake_openai_server.py --port 0 --ttft-ms 50 --itl-ms 10
It prints "PORT <n>" once listening. GET /stats returns what it observed: request count,
peak concurrent requests, arrival times (monotonic seconds) and the request bodies.
"""
import argparse
import asyncio
import json
import socket
import time
from dataclasses import dataclass, field

from aiohttp import web

MODEL_NAME = "fake-model"


@dataclass
class Observed:
    requests: int = 0
    active: int = 0
    peak_concurrency: int = 0
    arrival_times: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--num-tokens", type=int, default=0,
                        help="Tokens per response; 0 streams max_tokens of them.")
    parser.add_argument("--token-text", default=" the")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="Answer every Nth request with HTTP 500.")
    parser.add_argument("--slow-every", type=int, default=0,
                        help="Add --slow-ttft-ms to the first token of every Nth request.")
    parser.add_argument("--slow-ttft-ms", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true",
                        help="Never send the usage chunk.")
    return parser.parse_args()


def completion_chunk(text: str, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason}
    return {"id": "cmpl-fake", "object": "text_completion", "model": MODEL_NAME,
            "choices": [choice]}


def chat_chunk(delta: dict, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": MODEL_NAME,
            "choices": [choice]}


def usage_chunk(prompt: str, completion_tokens: int) -> dict:
    prompt_tokens = len(prompt.split())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {"id": "fake", "model": MODEL_NAME, "choices": [], "usage": usage}


class FakeServer:
    def __init__(self, config: argparse.Namespace):
        self.config = config
        self.observed = Observed()

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_NAME, "object": "model", "owned_by": "tests"}]})

    async def stats(self, _request: web.Request) -> web.Response:
        observed = self.observed
        return web.json_response({
            "requests": observed.requests, "peak_concurrency": observed.peak_concurrency,
            "arrival_times": observed.arrival_times, "bodies": observed.bodies})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        index = self._arrive(body)
        try:
            if self.config.fail_every and index % self.config.fail_every == 0:
                return web.json_response({"error": f"injected failure #{index}"}, status=500)
            return await self._stream(request, body, index, chat)
        finally:
            self.observed.active -= 1

    def _arrive(self, body: dict) -> int:
        observed = self.observed
        observed.requests += 1
        observed.arrival_times.append(time.monotonic())
        observed.bodies.append(body)
        observed.active += 1
        observed.peak_concurrency = max(observed.peak_concurrency, observed.active)
        return observed.requests

    async def _stream(self, request: web.Request, body: dict, index: int,
                      chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if chat:
            await send_event(response, chat_chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(self._first_token_delay(index) / 1000)
        num_tokens = self.config.num_tokens or body["max_tokens"]
        for position in range(num_tokens):
            if position:
                await asyncio.sleep(self.config.itl_ms / 1000)
            await send_event(response, self._text_chunk(self.config.token_text, chat))
        await send_event(response, self._text_chunk("", chat, finish_reason="length"))
        if self._wants_usage(body):
            prompt = body.get("prompt") or body["messages"][-1]["content"]
            await send_event(response, usage_chunk(prompt, num_tokens))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _first_token_delay(self, index: int) -> float:
        slow = self.config.slow_every and index % self.config.slow_every == 0
        return self.config.ttft_ms + (self.config.slow_ttft_ms if slow else 0.0)

    @staticmethod
    def _text_chunk(text: str, chat: bool, finish_reason: str | None = None) -> dict:
        if chat:
            return chat_chunk({"content": text} if text else {}, finish_reason)
        return completion_chunk(text, finish_reason)

    def _wants_usage(self, body: dict) -> bool:
        options = body.get("stream_options") or {}
        return bool(options.get("include_usage")) and not self.config.no_usage


async def send_event(response: web.StreamResponse, payload: dict) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


def make_app(server: FakeServer) -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/stats", server.stats)
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    return app


async def serve(config: argparse.Namespace) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", config.port))
    runner = web.AppRunner(make_app(FakeServer(config)), access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(parse_args()))
