"""Request bodies from raw bytes: bounded size, bounded JSON, then the pydantic model."""
import json
import re
from http import HTTPStatus
from typing import Any, Optional, TypeVar

import pydantic
from fastapi import Request

from vllm.entrypoints.openai.errors import OpenAIError
from vllm.sampling_params import INT64_MAX, INT64_MIN

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)
DEFAULT_MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\])$")
_PROMPT_SHAPES = ("a string, a list of strings, a list of token ids or a list of "
                  "token-id lists")


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(f"the request body is larger than {limit} bytes "
                       "(--max-request-body-bytes)", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       code="request_too_large")


async def read_body(raw_request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed `limit` bytes."""
    declared = raw_request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in raw_request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_json_tree(data: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH, strings that are not valid Unicode (a lone
    surrogate) and integers outside 64 bits, wherever they are in the body."""
    if _has_problem(data):
        _explain_problem(data)


def _has_problem(data: Any) -> bool:
    """The fast walk: no paths kept; a list of plain ints (token ids) is checked by its
    extremes."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is list or kind is dict:
            if depth > MAX_JSON_DEPTH:
                return True
            if kind is dict:
                if not all(_is_valid_text(key) for key in value):
                    return True
                value = value.values()
            elif value and all(type(item) is int for item in value):
                if min(value) < INT64_MIN or max(value) > INT64_MAX:
                    return True
                continue
            stack.extend((item, depth + 1) for item in value)
        elif kind is str:
            if not _is_valid_text(value):
                return True
        elif kind is int and not INT64_MIN <= value <= INT64_MAX:
            return True
    return False


def _is_valid_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _explain_problem(data: Any) -> None:
    """The slow walk, with paths, for the message."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            stack.extend(_children(value, depth, path))
        elif isinstance(value, str):
            _check_unicode(value, path)
        elif isinstance(value, int) and not isinstance(value, bool):
            _check_int64(value, path)


def _children(value, depth: int, path: str):
    if isinstance(value, list):
        return [(item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value)]
    children = []
    for key, item in value.items():
        _check_unicode(key, path)
        children.append((item, depth + 1, f"{path}.{key}" if path else key))
    return children


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = f"'{path}'" if path else "the body"
        raise OpenAIError(f"{where} contains invalid Unicode (a lone UTF-16 surrogate)",
                          param=_top_field(path)) from None


def _check_int64(number: int, path: str) -> None:
    if not INT64_MIN <= number <= INT64_MAX:
        raise OpenAIError(f"'{path}' must fit in a signed 64-bit integer, got {number}",
                          param=_top_field(path))


def _top_field(path: str) -> Optional[str]:
    return path.split(".")[0].split("[")[0] or None


def _too_deep() -> OpenAIError:
    return OpenAIError(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body, or raise a 400 that says what is wrong with it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OpenAIError(f"malformed JSON body: {error}") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise OpenAIError(f"the request body must be a JSON object, got {type(data).__name__}")
    check_json_tree(data)
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
