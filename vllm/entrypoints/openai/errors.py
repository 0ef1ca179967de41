"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}, and the handlers
that turn every failure of a request into one (never a crash of the server)."""
import json
import re
from http import HTTPStatus
from typing import Any, Optional, TypeVar

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vllm.engine.core_client import EngineDeadError, KVTransferError
from vllm.engine.processor import InvalidRequestError
from vllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse
from vllm.logger import init_logger

logger = init_logger(__name__)

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\])$")
_PROMPT_SHAPES = ("a string, a list of strings, a list of token ids or a list of "
                  "token-id lists")


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
        return JSONResponse(self.to_body(), status_code=self.status)


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


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body, or raise a 400 that says what is wrong with it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OpenAIError(f"malformed JSON body: {error}") from None
    if not isinstance(data, dict):
        raise OpenAIError(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def validate(data: dict[str, Any], model_cls: type[ModelT]) -> ModelT:
    """Build `model_cls` from a decoded body, or raise a 400 naming the offending field."""
    try:
        return model_cls.model_validate(data)
    except pydantic.ValidationError as error:
        raise validation_error(error) from None


def parse_body(raw: bytes, model_cls: type[ModelT]) -> ModelT:
    return validate(parse_json_object(raw), model_cls)


def validation_error(error: pydantic.ValidationError) -> OpenAIError:
    first = error.errors()[0]
    path = [str(part) for part in first["loc"] if not _UNION_TAG.match(str(part))]
    param = ".".join(path) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return OpenAIError(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return OpenAIError(f"'{param}' is a required field", param=param)
    if path and path[0] == "prompt":
        return OpenAIError(f"'prompt' must be {_PROMPT_SHAPES}", param="prompt")
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return OpenAIError(f"'{param}': {first['msg']} (got {shown})", param=param)


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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        return from_exception(error).to_response()
