"""Start `vllm serve` as a subprocess on a free port, wait for /health, stop it by PID;
read its /metrics."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

import psutil
import requests

from free_ports import free_port, free_port_range  # noqa: F401  (re-exported for the tests)

SERVE_MODULE = "vllm.entrypoints.cli.serve"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT_S = float(os.environ.get("VLLM_TEST_SERVER_STARTUP_S", "600"))


def recorded_pids(pid_file: str) -> list[int]:
    """The PIDs in a pd_example PID file ("name pid" lines)."""
    with open(pid_file) as handle:
        return [int(line.split()[1]) for line in handle
                if line.strip() and not line.startswith("#")]


@contextlib.contextmanager
def occupied_port():
    """A port some other socket is listening on, for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", SERVE_MODULE, *args]


class RemoteServer:
    """One `vllm serve` process (and the engine process it spawns)."""

    def __init__(self, args: list[str], env: Optional[dict] = None):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log",
                                               delete=False)
        command = serve_command(*args, "--host", self.host, "--port", str(self.port))
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT, env={**os.environ, **(env or {})})
        self.child_pids: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> "RemoteServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n"
                                   f"{self.read_log()}")
            try:
                if requests.get(self.url_for("/health"), timeout=5).status_code == 200:
                    self.child_pids = [c.pid for c in
                                       psutil.Process(self.proc.pid).children(recursive=True)]
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vllm serve not ready in {timeout:.0f} s:\n{self.read_log()}")

    def engine_pid(self) -> int:
        """The engine-core process: the direct child that is not multiprocessing's tracker."""
        for pid in self.child_pids:
            try:
                child = psutil.Process(pid)
                command = " ".join(child.cmdline())
                is_direct = child.ppid() == self.proc.pid
            except psutil.NoSuchProcess:
                continue
            if is_direct and "resource_tracker" not in command:
                return pid
        raise RuntimeError(f"no engine process among children {self.child_pids}")

    def read_log(self) -> str:
        with open(self.log.name) as handle:
            return handle.read()[-20000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server, wait for it; kill it (and its children) if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_all()
                raise
        return self.proc.returncode

    def leftover_pids(self, timeout: float = 15) -> list[int]:
        deadline = time.monotonic() + timeout
        alive = self.child_pids
        while time.monotonic() < deadline:
            alive = [pid for pid in self.child_pids if _is_running(pid)]
            if not alive:
                break
            time.sleep(0.2)
        return alive

    def _kill_all(self) -> None:
        for pid in [self.proc.pid, *self.child_pids]:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """Make sure nothing is left running (test teardown)."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass
        for pid in self.leftover_pids(timeout=5):
            os.kill(pid, signal.SIGKILL)
        os.unlink(self.log.name)


@contextlib.contextmanager
def running_server(args: list[str], env: Optional[dict] = None):
    """A ready `vllm serve` for the block; everything it started is stopped after."""
    remote = RemoteServer(args, env)
    try:
        yield remote.wait_ready()
    finally:
        remote.close()


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_metrics(server: RemoteServer) -> dict[str, float]:
    """{metric name (labels dropped, summed): value} from /metrics."""
    text = requests.get(server.url_for("/metrics"), timeout=60).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, value = line.rsplit(" ", 1)
        name = name_and_labels.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
    return values


def wait_until_idle(server: RemoteServer, num_blocks: int, timeout: float = 180) -> dict:
    """Wait until no request runs or waits and every KV block is free again."""
    deadline = time.monotonic() + timeout
    metrics = {}
    while time.monotonic() < deadline:
        metrics = read_metrics(server)
        if (metrics.get("vllm:num_requests_running") == 0
                and metrics.get("vllm:num_requests_waiting") == 0
                and metrics.get("vllm:num_free_kv_blocks") == num_blocks):
            return metrics
        time.sleep(0.5)
    raise TimeoutError(f"server not idle after {timeout} s: {metrics}")
