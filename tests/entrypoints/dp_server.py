"""Helpers for data-parallel servers in tests: per-engine metrics, the engine-core PIDs
the server logged, and the offline reference every DP layout must equal."""
import re

import requests

from vllm.batch_invariant import BATCH_INVARIANT_ENV

# Batch-invariant mode: the ranks batch the requests differently from the reference.
DP_ENV = {BATCH_INVARIANT_ENV: "1", "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "0.1"}
PROMPTS = [f"Item {i}: the colour of the sky is" for i in range(16)]
MAX_TOKENS = 6


def tiny_server_args(model: str, tokenizer: str) -> list[str]:
    return [model, "--tokenizer", tokenizer, "--max-model-len", "512", "--dtype", "float32",
            "--served-model-name", "tiny", "--uvicorn-log-level", "warning"]


def sampling(i: int) -> dict:
    """Even prompts greedy, odd ones seeded."""
    return {"temperature": 0.0} if i % 2 == 0 else {"temperature": 1.0, "seed": 100 + i}


def completion_body(i: int) -> dict:
    return {"model": "tiny", "prompt": PROMPTS[i], "max_tokens": MAX_TOKENS,
            "ignore_eos": True, **sampling(i)}


def reference_texts(model: str, tokenizer: str, monkeypatch) -> list[str]:
    """The same prompts through one offline engine (batch-invariant too)."""
    from vllm import LLM, SamplingParams
    monkeypatch.setenv(BATCH_INVARIANT_ENV, "1")
    llm = LLM(model=model, tokenizer=tokenizer, max_model_len=128, dtype="float32",
              num_gpu_blocks_override=256)
    params = [SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, **sampling(i))
              for i in range(len(PROMPTS))]
    return [output.outputs[0].text for output in llm.generate(PROMPTS, params)]


def engine_metric(url: str, name: str) -> dict[str, float]:
    """{engine label: value} of one metric (summed over its other labels)."""
    text = requests.get(url + "/metrics", timeout=60).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            engine = re.search(r'engine="(\d+)"', line).group(1)
            values[engine] = values.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def engine_core_pids(log: str) -> dict[int, int]:
    """{data-parallel rank: pid} from the server's start-up log."""
    found = re.findall(r"data-parallel rank (\d+)'s engine core process started \(pid (\d+)\)",
                       log)
    return {int(rank): int(pid) for rank, pid in found}


class HeadlessNode:
    """`vllm serve --headless` as a subprocess; stopped by PID with everything it started."""

    def __init__(self, args: list[str], env: dict):
        import os
        import subprocess
        import tempfile
        from remote_server import REPO_ROOT, serve_command
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-headless-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(serve_command(*args, "--headless"), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                     env={**os.environ, **env})

    def read_log(self) -> str:
        with open(self.log.name) as handle:
            return handle.read()[-20000:]

    def close(self) -> None:
        import os
        import signal
        import psutil
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        for child in children:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                os.kill(child.pid, signal.SIGKILL)
        os.unlink(self.log.name)
