"""Fixtures of the tensor-parallel executor tests: the tiny Qwen2 and its TP=1 reference."""
import pytest

from tp_helpers import (DEMO_GREEDY, DEMO_PROMPTS, DEMO_SEEDED, GREEDY, SEEDED, executor_of,
                        make_tp_llm, completions)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model_dirs) -> str:
    return tiny_model_dirs["qwen2"]


@pytest.fixture(scope="session")
def tiny_reference(tiny_qwen2, demo_model_dir):
    """Greedy and seeded completions of the tiny Qwen2 (4 heads, 2 KV heads) on one rank."""
    llm = make_tp_llm(tiny_qwen2, demo_model_dir, 1)
    shapes = executor_of(llm).worker.parameter_shapes()
    return {"greedy": completions(llm, GREEDY), "seeded": completions(llm, SEEDED),
            "shapes": shapes}


@pytest.fixture(scope="session")
def demo_reference(demo_model_dir):
    """Greedy and seeded completions of the demo model (9 heads, 3 KV heads) on one rank."""
    llm = make_tp_llm(demo_model_dir, demo_model_dir, 1, num_gpu_blocks_override=128)
    return {"greedy": completions(llm, DEMO_GREEDY, DEMO_PROMPTS),
            "seeded": completions(llm, DEMO_SEEDED, DEMO_PROMPTS)}


@pytest.fixture(scope="session")
def uneven_reference(uneven_qwen2, demo_model_dir):
    llm = make_tp_llm(uneven_qwen2, demo_model_dir, 1)
    return {"greedy": completions(llm, GREEDY), "seeded": completions(llm, SEEDED)}
