"""The proxy's handlers that reach instances: generate requests (split P/D) and /v1/models."""
import json
import uuid
from typing import Any, Optional

from aiohttp import web

from vllm.disagg.auth import instance_auth
from vllm.disagg.decode_forward import forward_to_decoder
from vllm.disagg.errors import error_response
from vllm.disagg.instances import Instance
from vllm.disagg.prefill_forward import run_prefill
from vllm.disagg.proxy_config import DECODE, PREFILL
from vllm.disagg.proxy_state import ProxyState
from vllm.disagg.request_bodies import decode_body, prefill_body

STATE_KEY = web.AppKey("proxy_state", ProxyState)
GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")
NO_DECODER = "no healthy decode instance is available"


class BadRequestBody(ValueError):
    """The client's body is not a JSON object."""


async def handle_generate(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions and /v1/chat/completions: prefill on P, answer from D."""
    state = request.app[STATE_KEY]
    try:
        body = await read_json_object(request)
    except BadRequestBody as error:
        return error_response(400, str(error))
    decoder = state.instances.acquire(DECODE)
    if decoder is None:
        return error_response(503, NO_DECODER)
    try:
        return await _split(request, state, body, decoder)
    finally:
        state.instances.release(decoder)


async def _split(request: web.Request, state: ProxyState, body: dict[str, Any],
                 decoder: Instance) -> web.StreamResponse:
    state.metrics.requests.inc()
    request_id = uuid.uuid4().hex
    headers = upstream_headers(request, request_id, state.config.instance_api_key)
    prefiller = state.instances.acquire(PREFILL, eligible=lambda inst: inst.kv_info is not None)
    if prefiller is None:
        state.metrics.prefill_fallbacks.inc()
        response, _ = await forward_to_decoder(request, state, decoder, headers,
                                               decode_body(body, None))
        return response
    prefill = state.spawn(run_prefill(state, prefiller, request.path, prefill_body(body),
                                      headers), name=f"prefill-{request_id}")
    prefill.add_done_callback(lambda _: state.instances.release(prefiller))
    answered = False
    try:
        response, answered = await forward_to_decoder(
            request, state, decoder, headers, decode_body(body, prefiller.kv_info))
        return response
    finally:
        if not answered:
            prefill.cancel()  # nobody will pull this KV cache: free it on P


async def handle_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: the answer of a healthy decoder."""
    state = request.app[STATE_KEY]
    decoder = state.instances.acquire(DECODE)
    if decoder is None:
        return error_response(503, NO_DECODER)
    try:
        headers = upstream_headers(request, uuid.uuid4().hex, state.config.instance_api_key)
        response, _ = await forward_to_decoder(request, state, decoder, headers)
        return response
    finally:
        state.instances.release(decoder)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; BadRequestBody when it is anything else."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequestBody(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequestBody("the request body must be a JSON object")
    return body


def upstream_headers(request: web.Request, request_id: str,
                     instance_api_key: Optional[str]) -> dict[str, str]:
    """Headers for both upstream requests: the shared id and the credentials, which are
    the instances' key when the proxy has one, else the client's own."""
    headers = {"X-Request-Id": request_id, "Accept-Encoding": "identity"}
    if instance_api_key:
        headers.update(instance_auth(instance_api_key))
    elif request.headers.get("Authorization"):
        headers["Authorization"] = request.headers["Authorization"]
    return headers
