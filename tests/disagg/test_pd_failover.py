"""A prefill instance SIGKILLed while decode requests wait on its KV: the decode instances
notice within seconds and recompute (or fail) every such request, leak no block, keep
serving a second producer's requests, and use the producer again once it restarts."""
import threading
import time
import uuid
from typing import Optional

import pytest
import requests

from pd_cluster import free_blocks, start_instance, wait_free_blocks

pytestmark = pytest.mark.slow

WAIT_S = 60  # kv_wait_timeout_s, far above every bound below: passing proves the fast path
NOTICE_S = 5  # from the kill to the outcome of each request that waited on the producer
REQUEST_TIMEOUT_S = 40  # on the old code the waiting requests only end after WAIT_S
ORPHAN_PROMPTS = [f"Orphan request {k}: the colour of the sky is" for k in range(4)]
LONG_PROMPT = "Tell me everything about the history of tea and its many trading routes. "


def _consumer(engine_id: str, policy: str = "recompute"):
    return start_instance("kv_consumer", engine_id, policy=policy,
                          extra={"kv_wait_timeout_s": WAIT_S})


@pytest.fixture(scope="module")
def cluster():
    servers = {"P": start_instance("kv_producer", "fo-p"),
               "P2": start_instance("kv_producer", "fo-p2"),
               "D": _consumer("fo-d"), "Dfail": _consumer("fo-dfail", policy="fail")}
    try:
        for server in servers.values():
            server.wait_ready()
        servers["idle"] = {name: free_blocks(s) for name, s in servers.items()}
        yield servers
    finally:
        for name, server in servers.items():
            if name != "idle":
                server.close()


# ---- requests ------------------------------------------------------------------------------
class Sent:
    """One completion request on its own thread; when it ended and how."""

    def __init__(self, server, prompt: str, kv: Optional[dict], request_id: str,
                 max_tokens: int = 4):
        self.body = {"model": "demo", "prompt": prompt, "max_tokens": max_tokens,
                     "temperature": 0}
        if kv is not None:
            self.body["kv_transfer_params"] = kv
        self.url = server.url + "/v1/completions"
        self.headers = {"X-Request-Id": request_id}
        self.response: Optional[requests.Response] = None
        self.error: Optional[Exception] = None
        self.ended = float("inf")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.response = requests.post(self.url, json=self.body, headers=self.headers,
                                          timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as error:
            self.error = error
        self.ended = time.monotonic()

    def result(self) -> requests.Response:
        self.thread.join(REQUEST_TIMEOUT_S + 10)
        assert self.response is not None, f"no answer: {self.error!r}"
        return self.response

    def text(self) -> str:
        response = self.result()
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    def cached_tokens(self) -> int:
        usage = self.result().json()["usage"]
        return (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)

    def prompt_tokens(self) -> int:
        return self.result().json()["usage"]["prompt_tokens"]


def remote_of(producer, engine_id: str) -> dict:
    """The decode side's kv_transfer_params naming this producer (as the proxy sends)."""
    return {"do_remote_prefill": True, "do_remote_decode": False, "remote_host": "127.0.0.1",
            "remote_port": producer.kv_port, "remote_engine_id": engine_id}


def orphan(consumer, producer, engine_id: str, prompt: str) -> Sent:
    """A decode request whose KV the producer is never asked to compute: it waits until
    the producer is found gone."""
    return Sent(consumer, prompt, remote_of(producer, engine_id), uuid.uuid4().hex)


def paired(producer, engine_id: str, consumer, prompt: str) -> tuple[Sent, Sent]:
    """What the proxy does: the same id to both, the prefill keeping its KV for the decode."""
    request_id = uuid.uuid4().hex
    prefill = Sent(producer, prompt, {"do_remote_decode": True}, request_id, max_tokens=1)
    return prefill, Sent(consumer, prompt, remote_of(producer, engine_id), request_id)


def local_text(server, prompt: str) -> str:
    return Sent(server, prompt, None, uuid.uuid4().hex).text()


def wait_waiting(server, count: int, timeout: float = 30) -> None:
    """Until `count` requests wait on the server (waiting_for_remote counts as waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        waiting = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("vllm:num_requests_waiting"))
        if waiting >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} requests never waited on {server.url}:\n"
                         f"{server.read_log()[-4000:]}")


def kill(server) -> float:
    server._kill_all()  # SIGKILL, by PID, the API server and its engine core
    return time.monotonic()


def assert_idle(cluster, names) -> None:
    for name in names:
        idle = cluster["idle"][name]
        assert wait_free_blocks(cluster[name], idle, timeout=30) == idle, f"{name} leaked"


def restart(cluster, name: str, engine_id: str) -> None:
    """A new producer process (new nonce) on the dead one's KV address."""
    old = cluster[name]
    old.close()
    cluster[name] = start_instance("kv_producer", engine_id, kv_port=old.kv_port)
    cluster[name].wait_ready()


# ---- tests ---------------------------------------------------------------------------------
def test_killed_producer_fails_its_waiting_requests_at_once(cluster):
    """Requests parked on P when it dies end within NOTICE_S: recomputed on D (the tokens
    of D's own computation), failed with kv_transfer_failed on Dfail; P2's requests are
    served by transfer all along."""
    producer, survivor = cluster["P"], cluster["P2"]
    recompute = [orphan(cluster["D"], producer, "fo-p", p) for p in ORPHAN_PROMPTS]
    fail = [orphan(cluster["Dfail"], producer, "fo-p", p) for p in ORPHAN_PROMPTS]
    wait_waiting(cluster["D"], len(recompute))
    wait_waiting(cluster["Dfail"], len(fail))
    time.sleep(0.5)  # P has every ConsumerReady
    before = [paired(survivor, "fo-p2", cluster["D"], LONG_PROMPT * k) for k in (2, 3)]
    killed = kill(producer)
    after = [paired(survivor, "fo-p2", cluster["D"], LONG_PROMPT * k) for k in (4, 5)]
    took = [sent.ended - killed for sent in recompute + fail if sent.result() is not None]
    print(f"kill -> outcome of each waiting request: {[round(t, 2) for t in took]} s")
    assert max(took) <= NOTICE_S, took
    for sent, prompt in zip(recompute, ORPHAN_PROMPTS):
        assert sent.text() == local_text(cluster["D"], prompt)
        assert sent.cached_tokens() == 0
    for sent in fail:
        assert sent.result().status_code == 503, sent.result().text
        assert sent.result().json()["error"]["code"] == "kv_transfer_failed"
    for prefill, decode in before + after:
        assert prefill.result().status_code == 200, prefill.result().text
        decode.text()
        assert decode.cached_tokens() == decode.prompt_tokens() - 1, "P2's KV did not arrive"
    assert_idle(cluster, ["D", "Dfail", "P2"])


def test_restarted_producer_serves_and_a_kill_mid_transfer_recomputes(cluster):
    """P restarts on its old address: its KV reaches D again. Killed while computing and
    sending long prompts, Dfail gives up on its one within NOTICE_S and D recomputes its
    own well before kv_wait_timeout_s."""
    restart(cluster, "P", "fo-p")
    prefill, decode = paired(cluster["P"], "fo-p", cluster["D"], LONG_PROMPT * 3 + "Again.")
    assert prefill.result().status_code == 200, prefill.result().text
    decode.text()
    assert decode.cached_tokens() == decode.prompt_tokens() - 1, "the restart is not used"
    prompts = [f"Variant {k}. " + LONG_PROMPT * 50 for k in range(2)]
    pairs = [paired(cluster["P"], "fo-p", cluster["D"], prompt) for prompt in prompts]
    _, failing = paired(cluster["P"], "fo-p", cluster["Dfail"], "Variant 2. " + prompts[0])
    wait_waiting(cluster["D"], len(pairs))
    wait_waiting(cluster["Dfail"], 1)
    time.sleep(0.8)  # P is computing (and streaming) the prompts
    killed = kill(cluster["P"])
    assert failing.result().status_code == 503, failing.result().text
    assert failing.result().json()["error"]["code"] == "kv_transfer_failed"
    for (_, decode), prompt in zip(pairs, prompts):
        assert decode.text() == local_text(cluster["D"], prompt)
    took = [decode.ended - killed for _, decode in pairs]
    print(f"kill mid-transfer -> fail policy answered in {failing.ended - killed:.2f} s, "
          f"recomputed requests in {[round(t, 2) for t in took]} s")
    print("".join(line for line in cluster["D"].read_log().splitlines(True)
                  if "KV receive" in line or "control connection" in line))
    assert failing.ended - killed <= NOTICE_S
    assert max(took) <= NOTICE_S * 3, took  # includes recomputing two long prompts
    assert_idle(cluster, ["D", "Dfail"])
