"""The decode half of a request: the client's answer, relayed from a decode instance."""
from typing import Any, Optional

from aiohttp import web

from vllm.disagg.errors import broken_midway, error_response
from vllm.disagg.instances import Instance
from vllm.disagg.proxy_state import ProxyState
from vllm.disagg.upstream import (RelayEnd, UpstreamTimeout, UpstreamUnreachable,
                                  end_stream, finish_upstream, open_upstream, relay)
from vllm.logger import init_logger

logger = init_logger(__name__)


async def forward_to_decoder(request: web.Request, state: ProxyState, decoder: Instance,
                             headers: dict[str, str], body: Optional[dict[str, Any]] = None
                             ) -> tuple[web.StreamResponse, bool]:
    """Send the client's request to a decoder and relay its answer as it arrives.

    Returns the response and whether the decoder answered a success status in full.
    An unreachable decoder leaves rotation and the client gets 502; a timeout gets 504.
    An answer that stops midway gets the same statuses (upstream_broken, upstream_timeout)
    while nothing was sent yet, else a stream ends with that error as its last event.
    """
    state.metrics.count_sent(decoder)
    method = "GET" if body is None else "POST"
    try:
        upstream = await open_upstream(state.http(), method, decoder.url + request.path,
                                       headers, state.request_timeout, body)
    except UpstreamUnreachable as error:
        _count_failure(state, decoder, str(error), unhealthy=True)
        return error_response(502, f"decode instance {decoder.url} is unreachable"), False
    except UpstreamTimeout as error:
        _count_failure(state, decoder, str(error), unhealthy=False)
        return error_response(504, f"decode instance {decoder.url} timed out"), False
    end = RelayEnd.CLIENT_GONE
    try:
        response, end = await relay(request, upstream)
    finally:
        finish_upstream(upstream, end is RelayEnd.COMPLETE)
    if end in (RelayEnd.UPSTREAM_BROKE, RelayEnd.UPSTREAM_TIMED_OUT):
        return await _stopped_midway(state, decoder, response, end), False
    if upstream.status >= 500:
        _count_failure(state, decoder, f"answered HTTP {upstream.status}", unhealthy=False)
    return response, end is RelayEnd.COMPLETE and upstream.status < 400


async def _stopped_midway(state: ProxyState, decoder: Instance,
                          response: Optional[web.StreamResponse],
                          end: RelayEnd) -> web.StreamResponse:
    broke = end is RelayEnd.UPSTREAM_BROKE
    _count_failure(state, decoder, f"the answer stopped midway ({end.value})",
                   unhealthy=broke)
    error = broken_midway("decode", decoder.url, timed_out=not broke)
    if response is None:
        return error.response()
    await end_stream(response, error.sse_event())
    return response


def _count_failure(state: ProxyState, decoder: Instance, reason: str, unhealthy: bool) -> None:
    state.metrics.decode_failures.inc()
    state.metrics.count_failed(decoder)
    if unhealthy:
        state.instances.mark_unhealthy(decoder, reason)
    logger.warning("decode request on %s failed: %s", decoder.url, reason)
