"""OpenAI-style error responses of the proxy: {"error": {message, type, param, code}}."""
from typing import Awaitable, Callable

from aiohttp import web

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError",
          413: "RequestEntityTooLargeError", 500: "InternalServerError",
          502: "BadGatewayError", 503: "ServiceUnavailableError",
          504: "GatewayTimeoutError"}


def error_body(status: int, message: str) -> dict:
    """The OpenAI error body for an HTTP status."""
    error_type = _TYPES.get(status, "BadRequestError" if status < 500 else "ServerError")
    return {"error": {"message": message, "type": error_type, "param": None, "code": status}}


def error_response(status: int, message: str) -> web.Response:
    """A JSON error response with the OpenAI error body."""
    return web.json_response(error_body(status, message), status=status)


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
