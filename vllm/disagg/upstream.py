"""Calling one instance and relaying its answer to the client as it arrives."""
import asyncio
from enum import Enum
from typing import Any, Optional

import aiohttp
from aiohttp import web


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


async def relay(request: web.Request,
                upstream: aiohttp.ClientResponse) -> tuple[web.StreamResponse, RelayEnd]:
    """Pass status, content type and body bytes through, each chunk as it arrives."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    content_type = upstream.headers.get(aiohttp.hdrs.CONTENT_TYPE)
    if content_type:
        response.headers[aiohttp.hdrs.CONTENT_TYPE] = content_type
    try:
        await response.prepare(request)
    except ConnectionResetError:
        return response, RelayEnd.CLIENT_GONE
    while True:
        try:
            chunk = await upstream.content.readany()
        except asyncio.TimeoutError:
            return response, RelayEnd.UPSTREAM_TIMED_OUT
        except (aiohttp.ClientError, OSError):
            return response, RelayEnd.UPSTREAM_BROKE
        try:
            if not chunk:
                await response.write_eof()
                return response, RelayEnd.COMPLETE
            await response.write(chunk)
        except ConnectionResetError:
            return response, RelayEnd.CLIENT_GONE


def finish_upstream(upstream: aiohttp.ClientResponse, fully_read: bool) -> None:
    """Give a fully read connection back to the pool; close any other (aborts upstream)."""
    if fully_read:
        upstream.release()
    upstream.close()


def abort_client(request: web.Request) -> None:
    """Close the client's connection so a truncated body is not taken for a whole one."""
    if request.transport is not None:
        request.transport.close()
