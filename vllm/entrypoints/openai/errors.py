"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}, and the handlers
that turn every failure of a request into one (never a crash of the server)."""
import re
from http import HTTPStatus
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vllm.engine.core_client import EngineDeadError, KVTransferError
from vllm.engine.processor import InvalidRequestError
from vllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from vllm.logger import init_logger

logger = init_logger(__name__)



class OpenAIError(Exception):
    """A request failure with its HTTP status and OpenAI error fields."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST,
                 type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.type = type
        self.param = param
        self.code = code

    def to_body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()

    def to_response(self) -> JSONResponse:
        """A 5xx (or a 413, whose body may be unread) asks the client to reconnect."""
        closes = self.status >= 500 or self.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        headers = {"Connection": "close"} if closes else None
        return JSONResponse(self.to_body(), status_code=self.status, headers=headers)


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(f"The model `{name}` does not exist.", HTTPStatus.NOT_FOUND,
                       param="model", code="model_not_found")


def engine_dead(error: Exception) -> OpenAIError:
    return OpenAIError(f"The engine is not available: {error}", HTTPStatus.SERVICE_UNAVAILABLE,
                       type="service_unavailable_error", code="engine_dead")


def from_exception(error: BaseException) -> OpenAIError:
    """Map any failure of a request to the error the client sees."""
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, EngineDeadError):
        return engine_dead(error)
    if isinstance(error, KVTransferError):
        return OpenAIError(str(error), HTTPStatus.SERVICE_UNAVAILABLE,
                           type="service_unavailable_error", code="kv_transfer_failed")
    if isinstance(error, (InvalidRequestError, ValueError)):
        return OpenAIError(str(error), param=_leading_name(str(error)))
    logger.error("request failed", exc_info=error)
    return OpenAIError(f"internal server error: {type(error).__name__}: {error}",
                       HTTPStatus.INTERNAL_SERVER_ERROR, type="internal_server_error")


def _leading_name(message: str) -> Optional[str]:
    match = re.match(r"^([a-z_]+) (must|is|are|needs)\b", message)
    return match.group(1) if match else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError):
        return error.to_response()

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, error: EngineDeadError):
        return engine_dead(error).to_response()

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, error: ValueError):
        return from_exception(error).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return OpenAIError(str(error.detail), error.status_code, type=kind).to_response()

    app.add_middleware(InternalErrorMiddleware)


class InternalErrorMiddleware:
    """Plain ASGI middleware: an exception no handler took becomes a complete 500 response
    (Starlette's own last-resort handler re-raises it and the connection is dropped)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:  # a stream broke midway: only the server can end it now
                raise
            await from_exception(error).to_response()(scope, receive, send)
