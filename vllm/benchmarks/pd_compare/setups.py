"""The serving setups compared: processes started on given cores, stopped by PID."""
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class SetupError(RuntimeError):
    pass


@dataclass
class ServingSetup:
    """One way of serving the model; `url` is where benchmark clients send requests."""
    name: str
    label: str
    port: int
    log_dir: str
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


@dataclass
class ColocatedSetup(ServingSetup):
    """One `vllm serve` instance on all the cores, TP=1 or TP over the cores."""
    model: str = ""
    cores: str = ""
    num_cores: int = 1
    tp: int = 1
    serve_args: list = field(default_factory=list)
    health_timeout_s: float = 600.0
    process: Optional[subprocess.Popen] = None

    def command(self) -> list[str]:
        return ["taskset", "-c", self.cores, "vllm", "serve", self.model, "--host",
                "127.0.0.1", "--port", str(self.port), "--tensor-parallel-size",
                str(self.tp), *self.serve_args]

    def start(self) -> None:
        env = dict(os.environ, **self.env)
        env["OMP_NUM_THREADS"] = str(max(self.num_cores // self.tp, 1))
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.makedirs(self.log_dir, exist_ok=True)
        log = open(os.path.join(self.log_dir, f"{self.name}.log"), "w")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_healthy(self.url, self.health_timeout_s, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process)
        self.process = None


@dataclass
class DisaggregatedSetup(ServingSetup):
    """Prefill and decode instances behind the proxy, started and stopped by the
    pd_example scripts (their PID file names exactly what they started)."""
    script_env: dict = field(default_factory=dict)

    def start(self) -> None:
        env = dict(os.environ, **self.env, **self.script_env)
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, f"{self.name}_start.log"), "w") as log:
            done = subprocess.run(["bash", os.path.join(REPO_ROOT, "pd_example",
                                                        "disaggregated_prefill.sh")],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            self.stop()
            raise SetupError(f"{self.label} did not start; see {log.name}")

    def stop(self) -> None:
        env = dict(os.environ, **self.env, **self.script_env)
        pid_file = self.script_env.get("PID_FILE")
        if pid_file and os.path.exists(pid_file):  # kill_server.sh removes it
            with open(pid_file) as source, open(pid_file + ".started", "a") as kept:
                kept.write(source.read())
        subprocess.run(["bash", os.path.join(REPO_ROOT, "pd_example", "kill_server.sh")],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupError(f"the server for {url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    stop_group(process)
    raise SetupError(f"{url} was not healthy within {timeout_s:.0f} s")


def stop_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group this process leads, SIGKILL what is left of it."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(process):
            time.sleep(0.2)
        if not _group_alive(process):
            break
    process.wait()


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader once it exits
    try:
        os.killpg(process.pid, 0)
        return True
    except ProcessLookupError:
        return False


def shell_words(text: str) -> list[str]:
    return shlex.split(text) if text else []
