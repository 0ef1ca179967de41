"""Real prefill/decode instances (`vllm serve` with --kv-transfer-config) and the proxy, as
subprocesses on free 127.0.0.1 ports, stopped by PID."""
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "entrypoints"))
from remote_server import REPO_ROOT, RemoteServer, free_port, read_metrics  # noqa: E402

BASE_ARGS = ["--max-model-len", "1024", "--served-model-name", "demo", "--dtype", "float32"]
# Batch-invariant mode: PD answers are compared token for token with a colocated
# instance's, which computes every token in other batch shapes.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "0.25", "OMP_NUM_THREADS": "1", "VLLM_BATCH_INVARIANT": "1"}


def free_kv_port() -> int:
    """A port p with p + 1 free too (the connector's control socket and TCP store)."""
    for _ in range(50):
        port = free_port()
        if port < 65000:
            return port
    raise RuntimeError("no free port pair")


def start_instance(role: str, engine_id: str, model_args: Optional[list[str]] = None,
                   extra: Optional[dict] = None, policy: str = "recompute",
                   args: Optional[list[str]] = None,
                   kv_port: Optional[int] = None) -> RemoteServer:
    config = {"kv_connector": "PushConnector", "kv_role": role, "kv_ip": "127.0.0.1",
              "kv_port": kv_port or free_kv_port(), "engine_id": engine_id,
              "kv_load_failure_policy": policy, "kv_connector_extra_config": extra or {}}
    server = RemoteServer([*(model_args or []), *BASE_ARGS, *(args or []),
                           "--kv-transfer-config", json.dumps(config)], env=ENV)
    server.kv_port = config["kv_port"]
    return server


def start_plain(model_args: Optional[list[str]] = None,
                args: Optional[list[str]] = None) -> RemoteServer:
    return RemoteServer([*(model_args or []), *BASE_ARGS, *(args or [])], env=ENV)


class Proxy:
    """`vllm proxy` in front of the given instances."""

    def __init__(self, prefills: list[RemoteServer], decodes: list[RemoteServer]):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-proxy-", suffix=".log",
                                               delete=False)
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "proxy",
                   "--host", "127.0.0.1", "--port", str(self.port), "--health-interval-s", "1",
                   "--prefiller-hosts", *["127.0.0.1"] * len(prefills),
                   "--prefiller-ports", *[str(s.port) for s in prefills],
                   "--decoder-hosts", *["127.0.0.1"] * len(decodes),
                   "--decoder-ports", *[str(s.port) for s in decodes]]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, num_prefill: int, num_decode: int, timeout: float = 60) -> "Proxy":
        """Until every instance is healthy and its KV endpoint known to the proxy."""
        def ready(health: requests.Response) -> bool:
            body = health.json() if health.status_code == 200 else {}
            return body.get("prefill") == num_prefill and body.get("decode") == num_decode
        self._poll_health(ready, timeout, "ready")
        time.sleep(1.5)  # one more health round: KV endpoints are known
        return self

    def wait_listening(self, timeout: float = 60) -> "Proxy":
        """Until the proxy answers /health at all (it probes every instance once before it
        listens), healthy instances or not."""
        self._poll_health(lambda health: True, timeout, "listening")
        return self

    def _poll_health(self, done, timeout: float, state: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if done(requests.get(self.url + "/health", timeout=5)):
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"proxy not {state}:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log.name) as handle:
            return handle.read()[-10000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.unlink(self.log.name)


def free_blocks(server: RemoteServer) -> float:
    return read_metrics(server).get("vllm:num_free_kv_blocks", -1)


def wait_free_blocks(server: RemoteServer, expected: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    value = free_blocks(server)
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        value = free_blocks(server)
    return value
