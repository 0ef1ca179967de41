"""TP=2 as Ray actors on a local Ray cluster: same tokens, prompt failure, clean shutdown."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vllm.executor.distributed_executor import ExecutorDeadError
from vllm.executor.ray_executor import RayExecutor, connect_to_ray, local_ranks

from tp_helpers import (DEMO_GREEDY, DEMO_PROMPTS, DEMO_SEEDED, GREEDY, SEEDED,
                        assert_same_answers, executor_of, make_tp_llm, token_ids,
                        wait_until_gone)

ray = pytest.importorskip("ray")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_llm(local_ray, tiny_qwen2, demo_model_dir):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 2, backend="ray")
    yield llm
    executor_of(llm).shutdown()


def test_ray_ranks_give_the_tokens_of_one_rank(ray_llm, tiny_reference):
    executor = executor_of(ray_llm)
    assert isinstance(executor, RayExecutor) and len(set(executor.worker_pids)) == 2
    assert os.getpid() not in executor.worker_pids
    assert_same_answers(ray_llm, GREEDY, tiny_reference["greedy"])
    assert_same_answers(ray_llm, SEEDED, tiny_reference["seeded"])


def test_ray_ranks_hold_half_of_the_split_weights(ray_llm, tiny_reference):
    shapes = executor_of(ray_llm).collective_rpc("parameter_shapes")
    full = tiny_reference["shapes"]["model.layers.0.mlp.gate_up_proj.weight"]
    assert [s["model.layers.0.mlp.gate_up_proj.weight"] for s in shapes] == [
        (full[0] // 2, full[1])] * 2


def test_killed_actor_is_noticed_and_shutdown_kills_the_rest(local_ray, tiny_qwen2,
                                                             demo_model_dir):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 2, backend="ray")
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    failures = []
    executor.register_failure_callback(failures.append)
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures and "rank 0's Ray actor failed" in failures[0]
    with pytest.raises(ExecutorDeadError, match="rank 0's Ray actor"):
        token_ids(llm, GREEDY)
    executor.shutdown()
    assert wait_until_gone(pids) == []
    assert executor.launcher.actors == []


@pytest.mark.slow
def test_demo_model_on_two_ray_ranks(local_ray, demo_model_dir, demo_reference):
    """Uneven KV groups (SmolLM2's 3 KV heads split 2 + 1) under Ray too."""
    llm = make_tp_llm(demo_model_dir, demo_model_dir, 2, backend="ray",
                      num_gpu_blocks_override=128)
    try:
        assert_same_answers(llm, DEMO_GREEDY, demo_reference["greedy"], DEMO_PROMPTS)
        assert_same_answers(llm, DEMO_SEEDED, demo_reference["seeded"], DEMO_PROMPTS)
    finally:
        executor_of(llm).shutdown()


def test_uneven_tiny_qwen2_on_two_ray_ranks(local_ray, uneven_qwen2, demo_model_dir,
                                            uneven_reference):
    llm = make_tp_llm(uneven_qwen2, demo_model_dir, 2, backend="ray")
    try:
        assert_same_answers(llm, GREEDY, uneven_reference["greedy"])
        assert_same_answers(llm, SEEDED, uneven_reference["seeded"])
    finally:
        executor_of(llm).shutdown()


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    import psutil
    from vllm import LLM
    if __name__ == "__main__":
        llm = LLM(sys.argv[1], tokenizer=sys.argv[2], max_model_len=256,
                  tensor_parallel_size=2, distributed_executor_backend="ray",
                  num_gpu_blocks_override=16)
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        print("PIDS", *llm.llm_engine.engine_core.executor.worker_pids, *pids, flush=True)
""")


@pytest.mark.slow
def test_exit_without_shutdown_leaves_no_actor(tmp_path, tiny_qwen2, demo_model_dir):
    script = tmp_path / "ray_exit.py"
    script.write_text(EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = subprocess.run([sys.executable, str(script), tiny_qwen2, demo_model_dir],
                            capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PIDS")]
    assert result.returncode == 0 and lines, result.stderr[-2000:]
    pids = [int(pid) for pid in lines[0].split()[1:]]
    assert wait_until_gone(pids, timeout_s=20.0) == []


def test_local_ranks_per_node():
    assert local_ranks(["a", "b", "a", "a"]) == ([0, 0, 1, 2], [3, 1, 3, 3])


class FakeRay:
    def __init__(self):
        self.calls = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)

    def cluster_resources(self):
        return {}


@pytest.mark.parametrize("address, expected", [
    (None, {"_node_ip_address": "127.0.0.1", "include_dashboard": False}),
    ("10.0.0.1:6379", {"address": "auto"})])
def test_connects_to_the_cluster_in_ray_address(monkeypatch, address, expected):
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    monkeypatch.delenv("VLLM_SERVE_HOST", raising=False)
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    fake = FakeRay()
    connect_to_ray(fake)
    assert fake.calls == [expected]
