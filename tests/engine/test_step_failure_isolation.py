"""A step that raises fails only its own requests: the engine core goes on, their blocks come
back, the half-written KV never serves a prefix hit, and a request outside the step is untouched."""
import pytest

from vllm.core.request import Request
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.core import EngineCore
from vllm.sampling_params import SamplingParams

NUM_BLOCKS = 64
PROMPT = list(range(100, 140))  # 40 tokens: two full blocks of 16


@pytest.fixture(scope="module")
def core():
    args = EngineArgs(model=None, max_model_len=256, num_gpu_blocks_override=NUM_BLOCKS,
                      dtype="float32")
    engine = EngineCore(args.create_engine_config("llm_class"))
    engine.isolate_step_errors = True
    yield engine
    engine.shutdown()


def greedy_request(request_id: str, prompt: list[int], max_tokens: int = 4) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return Request(request_id, prompt, params, eos_token_id=None)


def run_to_completion(core: EngineCore) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while core.has_work():
        for output in core.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    return tokens


class FailOnce:
    """Wraps execute_model: raises on the first call, then behaves."""

    def __init__(self, executor):
        self.executor = executor
        self.real = executor.execute_model
        self.calls = 0

    def __call__(self, scheduler_output):
        self.calls += 1
        if self.calls == 1:
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


def test_uncached_blocks_do_not_serve_a_prefix_hit(core, monkeypatch):
    core.kv_cache_manager.block_pool.reset_prefix_cache()
    monkeypatch.setattr(core.executor, "execute_model", FailOnce(core.executor))
    core.add_request(greedy_request("victim", PROMPT + [7]))
    core.step()
    core.take_errored()
    probe = greedy_request("probe", PROMPT + [7])
    _, num_hit_tokens = core.kv_cache_manager.get_computed_blocks(probe)
    assert num_hit_tokens == 0


def test_without_isolation_the_error_propagates(core, monkeypatch):
    monkeypatch.setattr(core, "isolate_step_errors", False)
    monkeypatch.setattr(core.executor, "execute_model", FailOnce(core.executor))
    core.add_request(greedy_request("loud", PROMPT))
    with pytest.raises(RuntimeError, match="injected failure"):
        core.step()
    core.abort_requests(["loud"])
    assert core.kv_cache_manager.get_num_free_blocks() == NUM_BLOCKS
