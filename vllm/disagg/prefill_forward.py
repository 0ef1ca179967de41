"""The prefill half of a request: a one-token request whose KV cache a decoder pulls."""
import asyncio
from typing import Any

import aiohttp

from vllm.disagg.instances import Instance
from vllm.disagg.proxy_state import ProxyState
from vllm.disagg.upstream import (UpstreamTimeout, UpstreamUnreachable, describe,
                                  finish_upstream, open_upstream)
from vllm.logger import init_logger

logger = init_logger(__name__)

_LOGGED_BODY_CHARS = 300


async def run_prefill(state: ProxyState, prefiller: Instance, path: str,
                      body: dict[str, Any], headers: dict[str, str]) -> None:
    """Send the prefill request and read its answer; failures are logged and counted.

    Nothing is retried: the decoder notices a missing KV transfer on its own.
    """
    state.metrics.count_sent(prefiller)
    request_id = headers.get("X-Request-Id", "?")
    try:
        upstream = await open_upstream(state.http(), "POST", prefiller.url + path, headers,
                                       state.request_timeout, body)
    except UpstreamUnreachable as error:
        state.instances.mark_unhealthy(prefiller, str(error))
        _count_failure(state, prefiller, request_id, str(error))
        return
    except UpstreamTimeout as error:
        _count_failure(state, prefiller, request_id, str(error))
        return
    fully_read = False
    try:
        payload = await upstream.read()
        fully_read = True
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        reason = f"reading the answer failed: {describe(error)}"
        _count_failure(state, prefiller, request_id, reason)
        return
    finally:
        finish_upstream(upstream, fully_read)
    if upstream.status >= 400:
        text = payload[:_LOGGED_BODY_CHARS].decode("utf-8", "replace")
        _count_failure(state, prefiller, request_id, f"HTTP {upstream.status}: {text}")


def _count_failure(state: ProxyState, prefiller: Instance, request_id: str,
                   reason: str) -> None:
    state.metrics.prefill_failures.inc()
    state.metrics.count_failed(prefiller)
    logger.warning("prefill of request %s on %s failed: %s", request_id, prefiller.url,
                   reason)
