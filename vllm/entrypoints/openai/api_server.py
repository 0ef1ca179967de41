"""The OpenAI-compatible HTTP server: FastAPI routes on uvicorn, the engine core in a child
process. Start-up binds the port first (a taken port fails at once), then starts the engine."""
import argparse
import asyncio
import hmac
import signal
import socket
from http import HTTPStatus
from dataclasses import dataclass
from typing import Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from vllm.engine.async_llm import AsyncLLM
from vllm.entrypoints.api_keys import (INVALID_API_KEY_CODE, INVALID_API_KEY_MESSAGE,
                                       OPEN_PATHS, bearer)
from vllm.entrypoints.openai.errors import OpenAIError, install_error_handlers
from vllm.entrypoints.openai.metrics import ServerMetrics
from vllm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                              DetokenizeRequest, ModelCard, ModelList,
                                              TokenizeChatRequest, TokenizeCompletionRequest)
from vllm.entrypoints.openai.request_body import (DEFAULT_MAX_REQUEST_BODY_BYTES, parse_body,
                                                  read_body)
from vllm.entrypoints.openai.request_limits import DEFAULT_MAX_N, RequestLimits, max_prompt_bytes
from vllm.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from vllm.kv_transfer_params import KvInfo
from vllm.logger import init_logger
from vllm.version import __version__

logger = init_logger(__name__)

GRACEFUL_SHUTDOWN_S = 5


@dataclass
class ServerState:
    engine: AsyncLLM
    served_model_names: list[str]
    metrics: ServerMetrics
    api_key: Optional[str] = None
    max_n: int = DEFAULT_MAX_N
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES


def request_limits(state: ServerState) -> RequestLimits:
    model_config = state.engine.model_config
    return RequestLimits(
        max_body_bytes=state.max_request_body_bytes, max_n=state.max_n,
        max_prompt_bytes=max_prompt_bytes(model_config.max_model_len,
                                          state.engine.get_tokenizer()))


def build_app(state: ServerState) -> FastAPI:
    """The FastAPI app over a started engine; the app's shutdown stops the engine."""

    async def lifespan(app: FastAPI):
        yield
        await state.engine.shutdown()

    app = FastAPI(title="vLLM-compatible API server", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    if state.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)
    limits = request_limits(state)
    names = state.served_model_names
    completion = OpenAIServingCompletion(state.engine, names, limits)
    chat = OpenAIServingChat(state.engine, names, limits)
    tokenization = OpenAIServingTokenization(state.engine, names, limits)

    async def body(raw_request: Request) -> bytes:
        return await read_body(raw_request, limits.max_body_bytes)

    async def parsed(raw_request: Request, model_cls):
        """Decoding and checking a large body takes a while: off the event loop."""
        return await asyncio.to_thread(parse_body, await body(raw_request), model_cls)

    @app.post("/v1/completions", openapi_extra=request_schema(CompletionRequest))
    async def create_completion(raw_request: Request):
        request = await parsed(raw_request, CompletionRequest)
        return await completion.create_completion(request, raw_request)

    @app.post("/v1/chat/completions", openapi_extra=request_schema(ChatCompletionRequest))
    async def create_chat_completion(raw_request: Request):
        request = await parsed(raw_request, ChatCompletionRequest)
        return await chat.create_chat_completion(request, raw_request)

    @app.post("/tokenize", openapi_extra=request_schema(TokenizeCompletionRequest,
                                                         TokenizeChatRequest))
    async def tokenize(raw_request: Request):
        raw = await body(raw_request)
        return (await asyncio.to_thread(tokenization.tokenize, raw)).model_dump()

    @app.post("/detokenize", openapi_extra=request_schema(DetokenizeRequest))
    async def detokenize(raw_request: Request):
        raw = await body(raw_request)
        return (await asyncio.to_thread(tokenization.detokenize, raw)).model_dump()

    install_body_schemas(app, [CompletionRequest, ChatCompletionRequest,
                               TokenizeCompletionRequest, TokenizeChatRequest,
                               DetokenizeRequest])

    _add_info_routes(app, state)
    return app


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    model_config = state.engine.model_config

    @app.get("/health")
    async def health():
        state.engine.check_health()
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        cards = [ModelCard(id=name, root=model_config.model,
                           max_model_len=model_config.max_model_len)
                 for name in state.served_model_names]
        return ModelList(data=cards).model_dump()

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/kv_transfer/info")
    async def kv_transfer_info():
        info = kv_transfer_info_of(state.engine.vllm_config)
        if info is None:
            raise OpenAIError("this instance has no KV connector (--kv-transfer-config)",
                              HTTPStatus.NOT_FOUND, type="NotFoundError")
        return info


SCHEMA_REF = "#/components/schemas/{model}"


def request_schema(*models) -> dict:
    """The OpenAPI entry of a route's JSON body (the routes read the body themselves)."""
    refs = [{"$ref": SCHEMA_REF.format(model=model.__name__)} for model in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def install_body_schemas(app: FastAPI, models) -> None:
    """Put the body models (and the models they use) in the document's components, where
    request_schema's references point."""
    make_document = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = make_document()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=SCHEMA_REF)
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
        return app.openapi_schema

    app.openapi = openapi


def kv_transfer_info_of(vllm_config) -> Optional[dict]:
    """What a proxy needs to pair this instance with others."""
    config = vllm_config.kv_transfer_config
    if config is None:
        return None
    return KvInfo(config.engine_id, config.kv_role, config.kv_ip, config.kv_port,
                  vllm_config.parallel_config.tensor_parallel_size).to_json()


class ApiKeyMiddleware:
    """Plain ASGI middleware: every route but OPEN_PATHS needs 'Authorization: Bearer
    <api key>' (vLLM leaves routes outside /v1 open; /tokenize would use the model)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = bearer(api_key).encode()

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] == "OPTIONS"
                or scope["path"] in OPEN_PATHS):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        error = OpenAIError(INVALID_API_KEY_MESSAGE, 401, code=INVALID_API_KEY_CODE)
        await error.to_response()(scope, receive, send)


class _DrainingServer(uvicorn.Server):
    """uvicorn, but shutdown first lets requests finish for a while, then aborts them."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLM):
        super().__init__(config)
        self.engine = engine

    async def shutdown(self, sockets=None) -> None:
        await self.engine.drain(GRACEFUL_SHUTDOWN_S)
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    """Reserve the port now; uvicorn listens on it once the engine is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt()


async def run_server(args: argparse.Namespace, vllm_config, sock: socket.socket,
                     client=None, client_index: int = 0) -> None:
    """Serve on the bound `sock` until SIGINT / SIGTERM; the engine process is always stopped
    on the way out. `client`: the engine client of API server `client_index` of several."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    names = args.served_model_name or [vllm_config.model_config.served_model_name]
    metrics = ServerMetrics(names[0], vllm_config.parallel_config.data_parallel_size)
    metrics.counts_engine_events = client_index == 0
    engine = None
    try:
        engine = await AsyncLLM.from_vllm_config(
            vllm_config, log_requests=not args.disable_log_requests, stat_logger=metrics,
            client=client)
        app = build_app(ServerState(engine, names, metrics, api_key=args.api_key,
                                    max_n=args.max_n,
                                    max_request_body_bytes=args.max_request_body_bytes))
        config = uvicorn.Config(app, log_level=args.uvicorn_log_level,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        logger.info("serving %s on http://%s:%d", ", ".join(names), args.host, args.port)
        await _DrainingServer(config, engine).serve(sockets=[sock])
    finally:
        if engine is not None:
            await engine.shutdown()
        sock.close()
