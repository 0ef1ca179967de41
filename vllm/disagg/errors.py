"""OpenAI-style error responses of the proxy: {"error": {message, type, param, code}}."""
import json
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Union

from aiohttp import web

from vllm.entrypoints.api_keys import INVALID_API_KEY_CODE, INVALID_API_KEY_MESSAGE

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError",
          413: "RequestEntityTooLargeError", 500: "InternalServerError",
          502: "BadGatewayError", 503: "ServiceUnavailableError",
          504: "GatewayTimeoutError"}


@dataclass(frozen=True)
class ProxyError:
    """One failure as the client sees it: a JSON response, or the last event of a stream.

    `type` defaults to a name for the status and `code` to the status itself.
    """
    status: int
    message: str
    type: Optional[str] = None
    code: Union[str, int, None] = None

    def body(self) -> dict:
        error_type = self.type or _TYPES.get(
            self.status, "BadRequestError" if self.status < 500 else "ServerError")
        code = self.status if self.code is None else self.code
        return {"error": {"message": self.message, "type": error_type, "param": None,
                          "code": code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)

    def sse_event(self) -> bytes:
        """The body as one SSE data event, as `vllm serve` reports a failed stream."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def error_body(status: int, message: str) -> dict:
    """The OpenAI error body for an HTTP status."""
    return ProxyError(status, message).body()


def error_response(status: int, message: str) -> web.Response:
    """A JSON error response with the OpenAI error body."""
    return ProxyError(status, message).response()


def invalid_api_key() -> ProxyError:
    """The 401 of a request without the proxy's API key (the body `vllm serve` sends)."""
    return ProxyError(401, INVALID_API_KEY_MESSAGE, "invalid_request_error",
                      INVALID_API_KEY_CODE)


def broken_midway(role: str, url: str, timed_out: bool) -> ProxyError:
    """An instance whose answer stopped after it began: 502 upstream_broken, or 504
    upstream_timeout when the request timeout ran out."""
    if timed_out:
        return ProxyError(504, f"{role} instance {url} timed out midway through the answer",
                          "timeout_error", "upstream_timeout")
    return ProxyError(502, f"{role} instance {url} stopped midway through the answer "
                      "(its connection broke)", "service_unavailable_error",
                      "upstream_broken")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own HTTP errors (unknown path, wrong method) with an OpenAI body."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, f"{error.reason}: {request.method} {request.path}")
