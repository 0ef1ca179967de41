"""A step that raises fails only its own requests, and the engine core goes on."""
import pytest

from vllm.core.request import Request
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.core import MAX_FAILED_STEPS_IN_A_ROW, EngineCore
from vllm.sampling_params import SamplingParams

NUM_BLOCKS = 64
PROMPT = list(range(100, 140))  # 40 tokens: two full blocks of 16


@pytest.fixture(scope="module")
def core():
    args = EngineArgs(model=None, max_model_len=256, num_gpu_blocks_override=NUM_BLOCKS,
                      dtype="float32")
    engine = EngineCore(args.create_engine_config("llm_class"), isolate_step_errors=True)
    yield engine
    engine.shutdown()


def greedy_request(request_id: str, prompt: list[int], max_tokens: int = 4) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return Request(request_id, prompt, params, eos_token_ids=None)


def run_to_completion(core: EngineCore) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while core.has_work():
        for output in core.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    return tokens


class FailOnce:
    """Wraps execute_model: raises on the first `failures` calls, then behaves."""

    def __init__(self, executor, failures: int = 1):
        self.real = executor.execute_model
        self.failures = failures
        self.calls = 0

    def __call__(self, scheduler_output):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("injected failure")
        return self.real(scheduler_output)


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(core, monkeypatch):
    core.add_request(greedy_request("reference", PROMPT))
    expected = run_to_completion(core)["reference"]
    core.kv_cache_manager.block_pool.reset_prefix_cache()

    monkeypatch.setattr(core.executor, "execute_model", FailOnce(core.executor))
    core.add_request(greedy_request("victim", PROMPT))
    outputs = core.step()
    assert [(o.request_id, o.finish_reason) for o in outputs] == [("victim", "abort")]
    assert "injected failure" in core.take_errored()["victim"]
    assert core.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS

    core.add_request(greedy_request("after", PROMPT))
    after = run_to_completion(core)
    assert after["after"] == expected
    assert core.scheduler.requests == {}


@pytest.mark.parametrize("num_victims", [1, 2])  # two equal prompts share their blocks
def test_uncached_blocks_do_not_serve_a_prefix_hit(core, monkeypatch, num_victims):
    core.kv_cache_manager.block_pool.reset_prefix_cache()
    monkeypatch.setattr(core.executor, "execute_model", FailOnce(core.executor))
    for index in range(num_victims):
        core.add_request(greedy_request(f"victim-{index}", PROMPT + [7]))
    core.step()
    assert len(core.take_errored()) == num_victims
    probe = greedy_request("probe", PROMPT + [7])
    _, num_hit_tokens = core.kv_cache_manager.get_computed_blocks(probe)
    assert num_hit_tokens == 0
    assert core.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS


def test_steps_that_keep_failing_end_the_engine(core, monkeypatch):
    core.add_request(greedy_request("healthy", PROMPT, max_tokens=1))
    run_to_completion(core)  # a step that succeeds starts the count afresh
    failing = FailOnce(core.executor, failures=MAX_FAILED_STEPS_IN_A_ROW)
    monkeypatch.setattr(core.executor, "execute_model", failing)
    for index in range(MAX_FAILED_STEPS_IN_A_ROW - 1):
        core.add_request(greedy_request(f"unlucky-{index}", PROMPT))
        core.step()
    core.add_request(greedy_request("last", PROMPT))
    with pytest.raises(RuntimeError, match="injected failure"):
        core.step()
    core.abort_requests(["last"])
    core.take_errored()
    core.add_request(greedy_request("healed", PROMPT, max_tokens=2))
    assert len(run_to_completion(core)["healed"]) == 2


def test_without_isolation_the_error_propagates(core, monkeypatch):
    monkeypatch.setattr(core, "isolate_step_errors", False)
    monkeypatch.setattr(core.executor, "execute_model", FailOnce(core.executor))
    core.add_request(greedy_request("loud", PROMPT))
    with pytest.raises(RuntimeError, match="injected failure"):
        core.step()
    core.abort_requests(["loud"])
    assert core.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS
