"""Calling one instance and relaying its answer to the client as it arrives."""
import asyncio
from enum import Enum
from typing import Any, Optional

import aiohttp
from aiohttp import web

EVENT_STREAM = "text/event-stream"
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")  # the blank line after each SSE event


class UpstreamUnreachable(Exception):
    """No response came back: connection refused, reset or closed before the headers."""


class UpstreamTimeout(Exception):
    """The instance did not answer within the request timeout."""


class RelayEnd(Enum):
    """How relaying an upstream response ended."""
    COMPLETE = "complete"              # the whole body reached the client
    UPSTREAM_BROKE = "upstream_broke"  # the instance's connection failed midway
    UPSTREAM_TIMED_OUT = "upstream_timed_out"  # the request timeout hit midway
    CLIENT_GONE = "client_gone"        # the client closed its connection


def describe(error: BaseException) -> str:
    """A short description of a client-side failure for logs."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def open_upstream(session: aiohttp.ClientSession, method: str, url: str,
                        headers: dict[str, str], timeout: aiohttp.ClientTimeout,
                        body: Optional[dict[str, Any]] = None) -> aiohttp.ClientResponse:
    """Send one request and return the response once its headers are in.

    Raises UpstreamUnreachable or UpstreamTimeout; the caller closes the response.
    """
    try:
        return await session.request(method, url, json=body, headers=headers,
                                     timeout=timeout)
    except asyncio.TimeoutError as error:
        raise UpstreamTimeout(f"{method} {url} timed out") from error
    except (aiohttp.ClientConnectionError, OSError) as error:
        raise UpstreamUnreachable(f"{method} {url}: {describe(error)}") from error


async def relay(request: web.Request, upstream: aiohttp.ClientResponse
                ) -> tuple[Optional[web.StreamResponse], RelayEnd]:
    """Pass the upstream answer on: status, content type and body.

    An event stream goes out event by event as it arrives; when it breaks, the events
    relayed so far end the body (an unfinished one is dropped) and the response comes
    back unfinished for the caller to close with end_stream(). Any other body is read
    whole first, so one that breaks comes back as (None, end) with nothing sent yet.
    """
    if upstream.content_type == EVENT_STREAM:
        return await _relay_events(request, upstream)
    return await _relay_whole(request, upstream)


async def _relay_whole(request: web.Request, upstream: aiohttp.ClientResponse
                       ) -> tuple[Optional[web.StreamResponse], RelayEnd]:
    try:
        body = await upstream.read()
    except asyncio.TimeoutError:
        return None, RelayEnd.UPSTREAM_TIMED_OUT
    except (aiohttp.ClientError, OSError):
        return None, RelayEnd.UPSTREAM_BROKE
    response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
    _copy_content_type(upstream, response)
    return response, RelayEnd.COMPLETE


async def _relay_events(request: web.Request, upstream: aiohttp.ClientResponse
                        ) -> tuple[Optional[web.StreamResponse], RelayEnd]:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    _copy_content_type(upstream, response)
    try:
        await response.prepare(request)
    except ConnectionResetError:
        return response, RelayEnd.CLIENT_GONE
    pending = b""  # the start of an event whose end has not arrived
    while True:
        try:
            chunk = await upstream.content.readany()
        except asyncio.TimeoutError:
            return response, RelayEnd.UPSTREAM_TIMED_OUT
        except (aiohttp.ClientError, OSError):
            return response, RelayEnd.UPSTREAM_BROKE
        try:
            if not chunk:
                await end_stream(response, pending)
                return response, RelayEnd.COMPLETE
            whole, pending = split_events(pending + chunk)
            if whole:
                await response.write(whole)
        except ConnectionResetError:
            return response, RelayEnd.CLIENT_GONE


def split_events(data: bytes) -> tuple[bytes, bytes]:
    """(the complete SSE events at the start of `data`, the unfinished rest)."""
    ends = [data.rfind(blank) + len(blank) for blank in _EVENT_ENDS if blank in data]
    end = max(ends, default=0)
    return data[:end], data[end:]


async def end_stream(response: web.StreamResponse, last: bytes = b"") -> None:
    """Write `last` and the terminating chunk; a client already gone is left alone."""
    try:
        if last:
            await response.write(last)
        await response.write_eof()
    except ConnectionResetError:
        pass


def _copy_content_type(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    content_type = upstream.headers.get(aiohttp.hdrs.CONTENT_TYPE)
    if content_type:
        response.headers[aiohttp.hdrs.CONTENT_TYPE] = content_type


def finish_upstream(upstream: aiohttp.ClientResponse, fully_read: bool) -> None:
    """Give a fully read connection back to the pool; close any other (aborts upstream)."""
    if fully_read:
        upstream.release()
    upstream.close()
