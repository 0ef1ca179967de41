"""A dead rank stops its instance promptly with a clear error; nothing outlives shutdown."""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from vllm.executor.distributed_executor import ExecutorDeadError, RankError

from tp_helpers import (GREEDY, assert_same_answers, executor_of, make_tp_llm, token_ids,
                        wait_until_gone)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_killed_idle_rank_is_noticed_and_the_other_instance_lives_on(
        tiny_qwen2, demo_model_dir, tiny_reference):
    victim = make_tp_llm(tiny_qwen2, demo_model_dir, 2)
    bystander = make_tp_llm(tiny_qwen2, demo_model_dir, 2)
    executor = executor_of(victim)
    failures = []
    executor.register_failure_callback(failures.append)
    pids = list(executor.worker_pids) + list(executor_of(bystander).worker_pids)
    os.kill(executor.worker_pids[1], signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures and "rank 1" in failures[0] and "-9" in failures[0]
    with pytest.raises(ExecutorDeadError, match="rank 1 .* exited with code -9"):
        token_ids(victim, GREEDY)
    assert_same_answers(bystander, GREEDY, tiny_reference["greedy"])
    executor.shutdown()
    executor_of(bystander).shutdown()
    assert wait_until_gone(pids) == []


def test_rank_killed_in_the_middle_of_a_step(tiny_qwen2, demo_model_dir):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 2)
    executor = executor_of(llm)
    pids = list(executor.worker_pids)
    os.kill(pids[1], signal.SIGSTOP)  # rank 0 now waits for rank 1 inside the step
    outcome = {}

    def generate():
        try:
            token_ids(llm, GREEDY)
        except Exception as error:
            outcome["error"], outcome["at"] = error, time.monotonic()

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not outcome
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    thread.join(10.0)
    assert not thread.is_alive(), "the engine hung after a rank died"
    assert isinstance(outcome["error"], ExecutorDeadError)
    assert outcome["at"] - killed_at < 3.0
    executor.shutdown()
    assert wait_until_gone(pids) == []


def test_start_up_failure_names_the_rank_and_leaves_no_process(tmp_path, tiny_qwen2,
                                                                demo_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(open(os.path.join(tiny_qwen2, "config.json")).read())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(RankError, match=r"rank \d failed in start-up: "):
        make_tp_llm(str(broken), demo_model_dir, 2)
    gc.collect()
    new = [p.pid for p in psutil.Process().children(recursive=True)
           if p.pid not in children_before]
    assert wait_until_gone(new) == []


def test_collected_llm_stops_its_ranks(tiny_qwen2, demo_model_dir):
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 2)
    pids = list(executor_of(llm).worker_pids)
    del llm
    gc.collect()
    assert wait_until_gone(pids) == []


SCRIPT = textwrap.dedent("""
    import sys, time
    from vllm import LLM
    if __name__ == "__main__":
        llm = LLM(sys.argv[1], tokenizer=sys.argv[2], max_model_len=256,
                  tensor_parallel_size=2, num_gpu_blocks_override=16)
        print("PIDS", *llm.llm_engine.engine_core.executor.worker_pids, flush=True)
        if sys.argv[3] == "hang":
            time.sleep(600)
""")


def run_script(tmp_path, tiny_qwen2, demo_model_dir, mode):
    script = tmp_path / "tp_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.Popen([sys.executable, str(script), tiny_qwen2, demo_model_dir, mode],
                            stdout=subprocess.PIPE, text=True, env=env)


def read_pids(process) -> list[int]:
    for line in process.stdout:
        if line.startswith("PIDS"):
            return [int(pid) for pid in line.split()[1:]]
    raise AssertionError(f"the script exited ({process.wait()}) without starting its ranks")


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_no_rank_outlives_its_parent(tmp_path, tiny_qwen2, demo_model_dir, mode):
    process = run_script(tmp_path, tiny_qwen2, demo_model_dir, mode)
    try:
        pids = read_pids(process)
        if mode == "hang":
            process.kill()  # no clean-up at all: the ranks notice their parent is gone
        assert process.wait(60) in (0, -signal.SIGKILL)
        assert wait_until_gone(pids, timeout_s=10.0) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
