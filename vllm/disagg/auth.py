"""API keys: the one clients must send to the proxy, and the one the proxy sends to instances."""
import hmac
from typing import Optional

from aiohttp import hdrs, web

from vllm.disagg.errors import Handler, invalid_api_key
from vllm.entrypoints.api_keys import OPEN_PATHS, bearer


def require_api_key(api_key: str):
    """Middleware: every path but OPEN_PATHS needs 'Authorization: Bearer <api_key>'."""
    expected = bearer(api_key).encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "surrogateescape")
        if request.path in OPEN_PATHS or hmac.compare_digest(given, expected):
            return await handler(request)
        return invalid_api_key().response()

    return check


def instance_auth(instance_api_key: Optional[str]) -> dict[str, str]:
    """The Authorization header for requests to instances ({} without a key)."""
    return {hdrs.AUTHORIZATION: bearer(instance_api_key)} if instance_api_key else {}
