"""The proxy's API key (--api-key) and the key it sends to instances (--instance-api-key)."""
import asyncio
import json

import pytest
from aiohttp import web
from fake_pd_instance import FakeInstance
from proxy_harness import cluster, wait_until

from vllm.disagg.cli import build_parser, config_from_args

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
PROXY_KEY = "proxy-secret"
INSTANCE_KEY = "instance-secret"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


class KeyedFake(FakeInstance):
    """An instance started with --api-key INSTANCE_KEY: all but /health and /metrics need it.

    It records the Authorization header of every request, probes included.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str]] = []

    async def _health(self, request):
        return await self._checked(request, super()._health, open_path=True)

    async def _kv_info(self, request):
        return await self._checked(request, super()._kv_info)

    async def _models(self, request):
        return await self._checked(request, super()._models)

    async def _generate(self, request):
        return await self._checked(request, super()._generate)

    async def _checked(self, request, handler, open_path: bool = False):
        given = request.headers.get("Authorization", "")
        self.seen.append((request.path, given))
        if open_path or given == f"Bearer {INSTANCE_KEY}":
            return await handler(request)
        return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)

# ---------------------------------------------------------------- clients and the proxy key

@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": PROXY_KEY},
                                     {"Authorization": f"Basic {PROXY_KEY}"}])
def test_requests_without_the_key_get_401(headers):
    async def scenario():
        async with cluster(api_key=PROXY_KEY) as c:
            answers = [await c.post(path, {"prompt": "x"}, headers=headers)
                       for path in (COMPLETIONS, CHAT, "/v1/nothing")]
            async with c.client.get(c.url + "/v1/models", headers=headers) as models:
                answers.append((models.status, models.content_type, await models.read()))
            return answers, c

    answers, c = run(scenario())
    for status, content_type, body in answers:
        assert (status, content_type) == (401, "application/json")
        assert json.loads(body) == {"error": {
            "message": "Incorrect or missing API key (expected 'Authorization: Bearer <key>')",
            "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    assert c.prefillers[0].received == [] and c.decoders[0].received == []


def test_requests_with_the_key_are_served():
    async def scenario():
        async with cluster(api_key=PROXY_KEY) as c:
            completion = await c.post(COMPLETIONS, {"prompt": "x"}, headers=bearer(PROXY_KEY))
            async with c.client.get(c.url + "/v1/models", headers=bearer(PROXY_KEY)) as models:
                return completion[0], models.status, c

    completion, models, c = run(scenario())
    assert completion == models == 200
    # No instance key: the client's own header goes on, as without --api-key.
    assert c.decoders[0].received[0].headers["Authorization"] == f"Bearer {PROXY_KEY}"


def test_health_and_metrics_need_no_key():
    async def scenario():
        async with cluster(api_key=PROXY_KEY) as c:
            async with c.client.get(c.url + "/health") as health:
                health_status = health.status
            async with c.client.get(c.url + "/metrics") as metrics:
                return health_status, metrics.status

    assert run(scenario()) == (200, 200)


def test_api_key_flag_and_vllm_api_key_env(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    config = config_from_args(build_parser().parse_args([]))
    assert config.api_key is None and config.instance_api_key is None
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    config = config_from_args(build_parser().parse_args([]))
    assert (config.api_key, config.instance_api_key) == ("from-env", "from-env")
    config = config_from_args(build_parser().parse_args(
        ["--api-key", "flag", "--instance-api-key", "inner"]))
    assert (config.api_key, config.instance_api_key) == ("flag", "inner")
    assert "flag" not in repr(config) and "inner" not in repr(config)


# ---------------------------------------------------------------- the proxy and the instances

def test_instance_key_replaces_the_client_header_everywhere():
    async def scenario():
        async with cluster(api_key=PROXY_KEY, instance_api_key=INSTANCE_KEY,
                           fake_class=KeyedFake) as c:
            await wait_until(lambda: c.instance(c.prefillers[0]).kv_info is not None)
            for stream in (False, True):
                status, _, _ = await c.post(COMPLETIONS, {"prompt": "x", "stream": stream},
                                            headers=bearer(PROXY_KEY))
                assert status == 200
            async with c.client.get(c.url + "/v1/models", headers=bearer(PROXY_KEY)) as models:
                assert models.status == 200
            await wait_until(lambda: len(c.prefillers[0].received) == 2)
            return c

    c = run(scenario())
    for fake in (*c.prefillers, *c.decoders):
        assert {given for _, given in fake.seen} == {f"Bearer {INSTANCE_KEY}"}
        assert all(r.headers["Authorization"] == f"Bearer {INSTANCE_KEY}"
                   for r in fake.received)
    paths = {path for path, _ in c.prefillers[0].seen}
    assert {"/health", "/v1/kv_transfer/info", COMPLETIONS} <= paths


def test_without_the_instance_key_a_keyed_prefiller_is_not_used():
    async def scenario():
        async with cluster(fake_class=KeyedFake) as c:
            await asyncio.sleep(0.3)  # a few health rounds: KV info answers 401
            status, _, _ = await c.post(COMPLETIONS, {"prompt": "x"}, headers=bearer("client"))
            return status, c

    status, c = run(scenario())
    assert status == 401  # the decoder refused the client's key, and the proxy said so
    assert c.instance(c.prefillers[0]).kv_info is None and c.prefillers[0].received == []
