"""The disaggregated prefill/decode proxy against fake instances, all in this process."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from fake_pd_instance import FakeInstance, bound_socket, json_answer, sse_chunks
from proxy_harness import cluster, producer_info, wait_until

from vllm.disagg.cli import build_parser, config_from_args, main, pair_endpoints
from vllm.disagg.instances import InstanceRegistry
from vllm.disagg.upstream import split_events

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def scrape(c, name: str) -> float:
    async with c.client.get(c.url + "/metrics") as response:
        return metric(await response.text(), name)


def answered_by(body: bytes) -> str:
    return json.loads(body)["instance"]


# ---------------------------------------------------------------- what P and D receive

def test_prefill_gets_one_token_non_streamed_request():
    client_body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 50, "max_completion_tokens": 50, "stream": True,
                   "stream_options": {"include_usage": True}, "n": 2, "temperature": 0.5}

    async def scenario():
        async with cluster() as c:
            status, _, _ = await c.post(CHAT, client_body)
            assert status == 200
            await wait_until(lambda: c.prefillers[0].received)
            return c.prefillers[0].received[0]

    prefill = run(scenario())
    assert prefill.path == CHAT
    expected = {"model": "m", "messages": client_body["messages"], "max_tokens": 1,
                "max_completion_tokens": 1, "stream": False, "n": 1, "temperature": 0.5,
                "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
    assert prefill.body == expected


def test_decoder_gets_producer_kv_info_and_shared_request_id():
    client_body = {"model": "m", "prompt": "hello", "max_tokens": 7}

    async def scenario():
        async with cluster() as c:
            status, _, _ = await c.post(COMPLETIONS, client_body,
                                        headers={"Authorization": "Bearer k"})
            assert status == 200
            await wait_until(lambda: c.prefillers[0].received)
            return c.prefillers[0].received[0], c.decoders[0].received[0]

    prefill, decode = run(scenario())
    info = producer_info("p0")
    assert decode.body == {**client_body, "kv_transfer_params": {
        "do_remote_prefill": True, "do_remote_decode": False,
        "remote_engine_id": info["engine_id"], "remote_host": info["kv_host"],
        "remote_port": info["kv_port"], "remote_tp_size": info["tensor_parallel_size"]}}
    assert len(prefill.request_id) == 32 and prefill.request_id == decode.request_id
    assert prefill.headers["Authorization"] == decode.headers["Authorization"] == "Bearer k"


def test_each_request_gets_its_own_id():
    async def scenario():
        async with cluster() as c:
            for _ in range(2):
                await c.post(COMPLETIONS, {"prompt": "x"})
            return [r.request_id for r in c.decoders[0].received]

    first, second = run(scenario())
    assert first != second


# ---------------------------------------------------------------- D's answer to the client

def test_sse_stream_passes_through_chunk_by_chunk_byte_identical():
    async def scenario():
        async with cluster() as c:
            decoder = c.decoders[0]
            decoder.stream_gate = asyncio.Event()
            async with c.client.post(c.url + COMPLETIONS,
                                     json={"prompt": "x", "stream": True}) as response:
                first = await response.content.readexactly(len(sse_chunks("d0")[0]))
                decoder.stream_gate.set()  # the rest only exists after the first arrived
                rest = await response.read()
                return response.status, response.content_type, first + rest

    status, content_type, body = run(scenario())
    assert (status, content_type) == (200, "text/event-stream")
    assert body == b"".join(sse_chunks("d0"))


def test_json_answer_passes_through():
    async def scenario():
        async with cluster() as c:
            return await c.post(COMPLETIONS, {"prompt": "x"})

    status, content_type, body = run(scenario())
    assert (status, content_type) == (200, "application/json")
    assert body == json.dumps(json_answer("d0")).encode()


@pytest.mark.parametrize("status", [400, 503])
def test_decoder_error_status_and_body_forwarded(status):
    error = json.dumps({"error": {"message": "bad max_tokens", "type": "BadRequestError",
                                  "param": "max_tokens", "code": status}}).encode()

    async def scenario():
        async with cluster() as c:
            c.decoders[0].error = (status, error)
            answer = await c.post(COMPLETIONS, {"prompt": "x", "max_tokens": -1})
            return answer, await scrape(c, "vllm_proxy:decode_failures_total")

    (got_status, content_type, body), failures = run(scenario())
    assert (got_status, content_type, body) == (status, "application/json", error)
    assert failures == (1.0 if status >= 500 else 0.0)


# ---------------------------------------------------------------- choosing instances

def test_least_loaded_decoder_is_chosen():
    async def scenario():
        async with cluster(num_decode=2) as c:
            for decoder in c.decoders:
                decoder.gate = asyncio.Event()
            held = asyncio.create_task(c.post(COMPLETIONS, {"prompt": "slow"}))
            await wait_until(lambda: any(d.active for d in c.decoders))
            busy, idle = sorted(c.decoders, key=lambda d: -d.active)
            idle.gate = None
            sequential = [answered_by((await c.post(COMPLETIONS, {"prompt": "x"}))[2])
                          for _ in range(3)]
            idle.gate = asyncio.Event()
            concurrent = [asyncio.create_task(c.post(COMPLETIONS, {"prompt": "y"}))
                          for _ in range(3)]
            await wait_until(lambda: busy.active + idle.active == 4)
            split = (busy.active, idle.active)
            busy.gate.set()
            idle.gate.set()
            await asyncio.gather(held, *concurrent)
            return idle.name, sequential, split

    idle_name, sequential, split = run(scenario())
    assert sequential == [idle_name] * 3  # plain round robin would alternate
    assert split == (2, 2)


def test_registry_breaks_ties_round_robin():
    registry = InstanceRegistry([], ["http://a:1", "http://b:2", "http://c:3"])
    for inst in registry.instances():
        inst.healthy = True
    picks = []
    for _ in range(6):
        inst = registry.acquire("decode")
        picks.append(inst.url)
        registry.release(inst)
    assert picks == ["http://a:1", "http://b:2", "http://c:3"] * 2


def test_unhealthy_decoder_leaves_rotation_and_returns():
    async def scenario():
        async with cluster(num_decode=2) as c:
            d0, d1 = c.decoders
            d1.healthy = False
            await wait_until(lambda: not c.instance(d1).healthy)
            while_down = [answered_by((await c.post(COMPLETIONS, {"prompt": "x"}))[2])
                          for _ in range(4)]
            d1.healthy = True
            await wait_until(lambda: c.instance(d1).healthy)
            after = [answered_by((await c.post(COMPLETIONS, {"prompt": "x"}))[2])
                     for _ in range(4)]
            return while_down, after

    while_down, after = run(scenario())
    assert while_down == ["d0"] * 4
    assert sorted(after) == ["d0", "d0", "d1", "d1"]


def test_no_healthy_decoder_answers_503():
    async def scenario():
        async with cluster() as c:
            c.decoders[0].healthy = False
            await wait_until(lambda: not c.instance(c.decoders[0]).healthy)
            async with c.client.get(c.url + "/health") as health:
                health_status = health.status
            return await c.post(COMPLETIONS, {"prompt": "x"}), health_status, c

    (status, _, body), health_status, c = run(scenario())
    error = json.loads(body)["error"]
    assert status == 503 and health_status == 503
    assert "no healthy decode instance" in error["message"]
    assert (error["type"], error["param"], error["code"]) == ("ServiceUnavailableError",
                                                              None, 503)
    assert c.prefillers[0].received == []


def test_no_healthy_prefiller_sends_decoder_alone():
    client_body = {"prompt": "x", "max_tokens": 3, "stream": True}

    async def scenario():
        async with cluster() as c:
            c.prefillers[0].healthy = False
            await wait_until(lambda: not c.instance(c.prefillers[0]).healthy)
            status, _, body = await c.post(COMPLETIONS, client_body)
            fallbacks = await scrape(c, "vllm_proxy:prefill_fallbacks_total")
            return status, body, fallbacks, c

    status, body, fallbacks, c = run(scenario())
    assert status == 200 and body == b"".join(sse_chunks("d0"))
    assert c.decoders[0].received[0].body == client_body
    assert c.prefillers[0].received == []
    assert fallbacks == 1.0


def test_prefiller_without_kv_info_is_not_used():
    async def scenario():
        async with cluster(prefill_kv_info=False) as c:
            status, _, _ = await c.post(COMPLETIONS, {"prompt": "x"})
            fallbacks = await scrape(c, "vllm_proxy:prefill_fallbacks_total")
            return status, fallbacks, c

    status, fallbacks, c = run(scenario())
    assert status == 200 and fallbacks == 1.0
    assert c.prefillers[0].received == []
    assert c.decoders[0].received[0].body == {"prompt": "x"}


def test_unreachable_decoder_answers_502_and_leaves_rotation():
    async def scenario():
        async with cluster(health_interval_s=60) as c:
            decoder = c.decoders[0]
            await decoder.stop()
            answer = await c.post(COMPLETIONS, {"prompt": "x"})
            return answer, c.instance(decoder).healthy

    (status, _, body), healthy = run(scenario())
    assert status == 502 and json.loads(body)["error"]["type"] == "BadGatewayError"
    assert not healthy


def test_decoder_dying_midstream_ends_the_stream_with_an_error_event():
    async def scenario():
        async with cluster(health_interval_s=60) as c:
            decoder = c.decoders[0]
            decoder.break_stream = True
            async with c.client.post(c.url + COMPLETIONS,
                                     json={"prompt": "x", "stream": True}) as response:
                body = await response.read()  # a clean end: no ClientPayloadError
            failures = await scrape(c, "vllm_proxy:decode_failures_total")
            return response.status, body, failures, c.instance(decoder)

    status, body, failures, decoder = run(scenario())
    first, last = sse_chunks("d0")[0], _last_event(body)
    assert status == 200 and body.startswith(first) and b"[DONE]" not in body
    assert body == first + b"data: " + json.dumps(last).encode() + b"\n\n"
    assert last == {"error": {"message": f"decode instance {decoder.url} stopped midway "
                                         "through the answer (its connection broke)",
                              "type": "service_unavailable_error", "param": None,
                              "code": "upstream_broken"}}
    assert failures == 1.0 and not decoder.healthy


def _last_event(body: bytes) -> dict:
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1].startswith(b"data: ")
    return json.loads(events[-1][len(b"data: "):])


class _HalfEventFake(FakeInstance):
    """Streams one event and half of the next, then dies; a plain answer dies halfway too."""

    async def _answer(self, request, body):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"
                                               if body.get("stream") else "application/json"})
        if not body.get("stream"):
            response.content_length = 100
        await response.prepare(request)
        await response.write(sse_chunks(self.name)[0] if body.get("stream") else b'{"id":')
        await response.write(b'data: {"id": "cmpl-half", "choi')
        request.transport.close()
        return response


def test_unfinished_event_is_dropped_before_the_error_event():
    async def scenario():
        async with cluster(health_interval_s=60, fake_class=_HalfEventFake) as c:
            async with c.client.post(c.url + COMPLETIONS,
                                     json={"prompt": "x", "stream": True}) as response:
                return await response.read()

    body = run(scenario())
    first = sse_chunks("d0")[0]
    assert body.startswith(first) and b"cmpl-half" not in body
    assert _last_event(body)["error"]["code"] == "upstream_broken"


def test_plain_answer_breaking_midway_is_a_502_json_error():
    async def scenario():
        async with cluster(health_interval_s=60, fake_class=_HalfEventFake) as c:
            return await c.post(COMPLETIONS, {"prompt": "x"})

    status, content_type, body = run(scenario())
    assert (status, content_type) == (502, "application/json")
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("service_unavailable_error", "upstream_broken")


def test_stream_timing_out_midway_ends_with_a_timeout_event():
    async def scenario():
        async with cluster(health_interval_s=60, request_timeout_s=0.5) as c:
            decoder = c.decoders[0]
            decoder.stream_gate = asyncio.Event()  # never opened: the answer stalls
            started = time.monotonic()
            async with c.client.post(c.url + COMPLETIONS,
                                     json={"prompt": "x", "stream": True}) as response:
                body = await response.read()
            return body, time.monotonic() - started, c.instance(decoder).healthy

    body, elapsed, healthy = run(scenario())
    assert body.startswith(sse_chunks("d0")[0]) and elapsed < 5
    error = _last_event(body)["error"]
    assert (error["type"], error["code"]) == ("timeout_error", "upstream_timeout")
    assert healthy  # slow is not dead


class _MortalFake(FakeInstance):
    """die() drops every connection at once, as the kernel does for a killed process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transports = []

    async def _answer(self, request, body):
        self.transports.append(request.transport)
        return await super()._answer(request, body)

    def die(self) -> None:
        for transport in self.transports:
            transport.abort()


def test_every_stream_in_flight_ends_promptly_when_the_decoder_dies():
    async def read_all(c):
        async with c.client.post(c.url + COMPLETIONS,
                                 json={"prompt": "x", "stream": True}) as response:
            return await response.read()

    async def scenario():
        async with cluster(health_interval_s=60, fake_class=_MortalFake) as c:
            decoder = c.decoders[0]
            decoder.stream_gate = asyncio.Event()
            streams = [asyncio.create_task(read_all(c)) for _ in range(8)]
            await wait_until(lambda: decoder.active == 8)
            killed = time.monotonic()
            decoder.die()
            bodies = await asyncio.wait_for(asyncio.gather(*streams), timeout=5)
            return bodies, time.monotonic() - killed

    bodies, elapsed = run(scenario())
    assert elapsed < 5
    assert all(_last_event(body)["error"]["code"] == "upstream_broken" for body in bodies)


def test_split_events_keeps_unfinished_event_back():
    assert split_events(b"data: 1\n\ndata: 2\n\ndata: 3") == (
        b"data: 1\n\ndata: 2\n\n", b"data: 3")
    assert split_events(b"data: 1\r\n\r\ndata") == (b"data: 1\r\n\r\n", b"data")
    assert split_events(b"data: 1\n") == (b"", b"data: 1\n")


def test_prefill_error_is_counted_and_decoder_still_answers():
    async def scenario():
        async with cluster() as c:
            c.prefillers[0].error = (500, b'{"error": "boom"}')
            answer = await c.post(COMPLETIONS, {"prompt": "x"})
            await wait_until(lambda: not c.state.background)
            return answer, await scrape(c, "vllm_proxy:prefill_failures_total")

    (status, _, body), failures = run(scenario())
    assert status == 200 and answered_by(body) == "d0"
    assert failures == 1.0


# ---------------------------------------------------------------- cancellation

@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_both_upstream_requests(stream):
    async def scenario():
        async with cluster() as c:
            prefiller, decoder = c.prefillers[0], c.decoders[0]
            prefiller.gate = asyncio.Event()
            if stream:
                decoder.stream_gate = asyncio.Event()
            else:
                decoder.gate = asyncio.Event()
            drop = await _start_request(c, stream)
            await wait_until(lambda: decoder.active and prefiller.active)
            request_id = decoder.received[0].request_id
            drop()
            await wait_until(lambda: decoder.cancelled and prefiller.cancelled)
            await wait_until(lambda: all(i.in_flight == 0 for i in c.state.instances.instances()))
            return request_id, decoder.cancelled, prefiller.cancelled

    request_id, decode_cancelled, prefill_cancelled = run(scenario())
    assert decode_cancelled == prefill_cancelled == [request_id]


async def _start_request(c, stream: bool):
    """Start a request (streamed: read its first chunk); returns what drops the connection."""
    if not stream:
        task = asyncio.create_task(c.post(COMPLETIONS, {"prompt": "x"}))
        return task.cancel
    response = await c.client.post(c.url + COMPLETIONS, json={"prompt": "x", "stream": True})
    await response.content.readany()
    return response.close


# ---------------------------------------------------------------- other endpoints

def test_models_health_and_metrics():
    async def scenario():
        async with cluster(num_decode=2) as c:
            await c.post(COMPLETIONS, {"prompt": "x"})
            await wait_until(lambda: not c.state.background)
            async with c.client.get(c.url + "/v1/models") as models:
                models_body = await models.json()
            async with c.client.get(c.url + "/health") as health:
                health_body = await health.json()
            async with c.client.get(c.url + "/metrics") as metrics:
                text = await metrics.text()
            return models_body, health_body, text, c

    models_body, health_body, text, c = run(scenario())
    assert models_body["data"][0]["id"] in ("model-d0", "model-d1")
    assert health_body == {"status": "ok", "prefill": 1, "decode": 2}
    assert metric(text, "vllm_proxy:requests_total") == 1.0
    prefill_url = c.prefillers[0].url
    assert (f'vllm_proxy:instance_requests_total{{role="prefill",url="{prefill_url}"}} 1.0'
            in text)
    assert f'vllm_proxy:instance_healthy{{role="prefill",url="{prefill_url}"}} 1.0' in text
    assert metric(text, "vllm_proxy:instance_in_flight") == 0.0


def test_bad_json_and_unknown_path_get_openai_errors():
    async def scenario():
        async with cluster() as c:
            async with c.client.post(c.url + COMPLETIONS, data=b"{not json",
                                     headers={"Content-Type": "application/json"}) as bad:
                bad_answer = bad.status, await bad.json()
            not_object = await c.post(COMPLETIONS, [1, 2])
            unknown = await c.post("/v1/nothing", {})
            return bad_answer, not_object, unknown, c

    (bad_status, bad_body), not_object, unknown, c = run(scenario())
    assert bad_status == 400 and bad_body["error"]["type"] == "BadRequestError"
    assert not_object[0] == 400
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == 404
    assert c.decoders[0].received == []


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("hosts, ports, urls", [
    (["a", "b"], [1], ["http://a:1", "http://b:1"]),
    (["a"], [1, 2], ["http://a:1", "http://a:2"]),
    (["a", "b"], [1, 2], ["http://a:1", "http://b:2"]),
    (["::1"], [5], ["http://[::1]:5"]),
])
def test_pair_endpoints(hosts, ports, urls):
    assert pair_endpoints("decoder", hosts, ports) == urls


def test_pair_endpoints_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="--decoder-hosts has 3 values"):
        pair_endpoints("decoder", ["a", "b", "c"], [1, 2])


def test_singular_and_plural_flags():
    args = build_parser().parse_args([
        "--host", "0.0.0.0", "--port", "1025", "--prefiller-hosts", "10.0.0.1",
        "--prefiller-port", "20002", "--decoder-host", "10.0.0.2", "10.0.0.3",
        "--decoder-ports", "20002", "--health-interval-s", "0.5"])
    config = config_from_args(args)
    assert config.prefill_urls == ["http://10.0.0.1:20002"]
    assert config.decode_urls == ["http://10.0.0.2:20002", "http://10.0.0.3:20002"]
    assert (config.host, config.port, config.health_interval_s) == ("0.0.0.0", 1025, 0.5)
    assert config.request_timeout_s == 600.0


def test_mismatched_counts_exit_2_with_one_line(capsys):
    code = main(["--prefiller-hosts", "a", "b", "c", "--prefiller-ports", "1", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--prefiller-hosts has 3 values" in err


def test_vllm_proxy_help_exits_0():
    done = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "proxy",
                           "--help"], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "--prefiller-hosts" in done.stdout and "--decoder-ports" in done.stdout


def test_vllm_proxy_mismatch_exits_2_with_one_line():
    done = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "proxy",
                           "--decoder-hosts", "a", "b", "c", "--decoder-ports", "1", "2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--decoder-hosts has 3" in done.stderr


def test_toy_proxy_server_serves_until_sigint():
    """pd_example/toy_proxy_server.py runs the proxy for real and stops cleanly."""
    async def scenario():
        prefiller, decoder = FakeInstance("p0", producer_info("p0")), FakeInstance("d0")
        for fake in (prefiller, decoder):
            await fake.start()
        sock = bound_socket()
        port = sock.getsockname()[1]
        sock.close()
        process = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(REPO_ROOT, "pd_example", "toy_proxy_server.py"),
            "--host", "127.0.0.1", "--port", str(port),
            "--prefiller-hosts", "127.0.0.1", "--prefiller-port", _port(prefiller),
            "--decoder-hosts", "127.0.0.1", "--decoder-ports", _port(decoder),
            "--health-interval-s", "0.2", cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": REPO_ROOT})
        try:
            answer = await _post_when_ready(f"http://127.0.0.1:{port}")
        finally:
            process.send_signal(signal.SIGINT)
            code = await process.wait()
            for fake in (prefiller, decoder):
                await fake.stop()
        return answer, code, len(prefiller.received)

    (status, body), code, prefills = run(scenario())
    assert status == 200 and answered_by(body) == "d0"
    assert prefills == 1 and code == 0


def _port(fake: FakeInstance) -> str:
    return fake.url.rsplit(":", 1)[1]


async def _post_when_ready(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as client:
        for _ in range(150):
            try:
                async with client.get(url + "/health") as health:
                    if health.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        async with client.post(url + COMPLETIONS, json={"prompt": "x"}) as response:
            return response.status, await response.read()
