"""A fake prefill/decode instance for proxy tests: an in-process aiohttp app on 127.0.0.1.

It records every generate request (path, headers, body), answers streamed (SSE) or plain
JSON, can be switched unhealthy, made to answer an error, or held at a gate; it records
the request ids whose handler was cancelled because the caller went away.
"""
import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any, Optional

from aiohttp import web
from multidict import CIMultiDict

NUM_CHUNKS = 3


@dataclass
class Received:
    path: str
    headers: CIMultiDict
    body: dict[str, Any]

    @property
    def request_id(self) -> Optional[str]:
        return self.headers.get("X-Request-Id")


def sse_chunks(name: str) -> list[bytes]:
    """The exact SSE events a fake named `name` streams, [DONE] last."""
    events = [{"id": f"cmpl-{name}", "object": "text_completion",
               "choices": [{"index": 0, "text": f" tok{i}", "finish_reason": None}]}
              for i in range(NUM_CHUNKS)]
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [
        b"data: [DONE]\n\n"]


def json_answer(name: str) -> dict[str, Any]:
    return {"id": f"cmpl-{name}", "object": "text_completion", "instance": name,
            "choices": [{"index": 0, "text": " answer", "finish_reason": "length"}]}


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free 127.0.0.1 port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class FakeInstance:
    """One fake instance; start() returns its base URL."""

    def __init__(self, name: str, kv_info: Optional[dict[str, Any]] = None):
        self.name = name
        self.kv_info = kv_info
        self.healthy = True
        self.error: Optional[tuple[int, bytes]] = None
        self.gate: Optional[asyncio.Event] = None     # generate waits here when set
        self.stream_gate: Optional[asyncio.Event] = None  # SSE waits after chunk 1
        self.break_stream = False  # SSE drops the connection after chunk 1
        self.received: list[Received] = []
        self.cancelled: list[Optional[str]] = []
        self.active = 0
        self.url = ""
        self._runner: Optional[web.AppRunner] = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/kv_transfer/info", self._kv_info)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = bound_socket()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _kv_info(self, request: web.Request) -> web.Response:
        if self.kv_info is None:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response(self.kv_info)

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (f"vllm:num_requests_running {self.active}\n"
                "vllm:num_requests_waiting 0\n")
        return web.Response(text=text, content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": f"model-{self.name}"}]})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.path, CIMultiDict(request.headers), await request.json())
        self.received.append(received)
        self.active += 1
        try:
            return await self._answer(request, received.body)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.append(received.request_id)
            raise
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.error is not None:
            status, payload = self.error
            return web.Response(status=status, body=payload, content_type="application/json")
        if self.gate is not None:
            await self.gate.wait()
        if not body.get("stream"):
            return web.json_response(json_answer(self.name))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, chunk in enumerate(sse_chunks(self.name)):
            await response.write(chunk)
            if index == 0 and self.break_stream:
                request.transport.close()
                return response
            if index == 0 and self.stream_gate is not None:
                await self.stream_gate.wait()
        await response.write_eof()
        return response
