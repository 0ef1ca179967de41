"""The proxy's aiohttp application and the server that runs it."""
import asyncio
import signal
import socket
from typing import AsyncIterator, Optional

import aiohttp
from aiohttp import web

from vllm.disagg.auth import instance_auth, require_api_key
from vllm.disagg.errors import error_response, openai_errors
from vllm.disagg.health import HealthMonitor
from vllm.disagg.proxy_config import DECODE, PREFILL, ProxyConfig
from vllm.disagg.proxy_state import ProxyState
from vllm.disagg.routing import (GENERATE_PATHS, NO_DECODER, STATE_KEY, handle_generate,
                                 handle_models)
from vllm.logger import init_logger

logger = init_logger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
# Below uvicorn's 5 s keep-alive, so the proxy never reuses a connection the server is closing.
KEEPALIVE_S = 4.0


def build_app(config: ProxyConfig) -> web.Application:
    """The proxy app; its HTTP session and health checks live while the app runs."""
    middlewares = [openai_errors]
    if config.api_key:
        middlewares.append(require_api_key(config.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = ProxyState.from_config(config)
    app.cleanup_ctx.append(_lifetime)
    for path in GENERATE_PATHS:
        app.router.add_post(path, handle_generate)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    state.session = aiohttp.ClientSession(connector=connector)
    monitor = HealthMonitor(state.instances, state.session, state.config.health_interval_s,
                            state.config.probe_timeout_s,
                            instance_auth(state.config.instance_api_key))
    await monitor.start()
    try:
        yield
    finally:
        await monitor.stop()
        await state.cancel_background()
        await state.session.close()
        state.session = None


async def handle_health(request: web.Request) -> web.Response:
    """200 with healthy instance counts while a decoder is healthy, else 503."""
    instances = request.app[STATE_KEY].instances
    prefill, decode = len(instances.healthy(PREFILL)), len(instances.healthy(DECODE))
    if decode == 0:
        return error_response(503, NO_DECODER)
    return web.json_response({"status": "ok", "prefill": prefill, "decode": decode})


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[STATE_KEY].metrics
    response = web.Response(body=metrics.render())
    response.headers[aiohttp.hdrs.CONTENT_TYPE] = metrics.content_type
    return response


async def start_server(config: ProxyConfig,
                       sock: Optional[socket.socket] = None) -> web.AppRunner:
    """Start serving on `sock`, or on config.host:config.port; the caller cleans up the runner.

    Handlers are cancelled when their client disconnects, which aborts upstream requests.
    """
    runner = web.AppRunner(build_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        if sock is None:
            site = web.TCPSite(runner, config.host, config.port)
        else:
            site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(config: ProxyConfig) -> None:
    """Run the proxy until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = await start_server(config)
    logger.info("proxy listening on http://%s:%d; prefill %s; decode %s; API key %s",
                config.host, config.port, config.prefill_urls, config.decode_urls,
                "required" if config.api_key else "not required")
    try:
        await stop.wait()
    finally:
        logger.info("proxy stopping")
        await runner.cleanup()
