"""The demo GGUF (SmolLM2-135M, Q4_1) through our config, tokenizer and loader."""
import os

import pytest
import torch

from vllm.model_executor.model_loader import get_model
from vllm.transformers_utils.config import get_hf_config
from vllm.transformers_utils.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def demo_path() -> str:
    from vllm.demo_model import demo_model_path
    try:
        return demo_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_config_and_tokenizer(demo_path):
    config = get_hf_config(demo_path)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.num_key_value_heads) == (30, 3)
    assert get_hf_config(demo_path) is config  # parsed once per path
    tokenizer = get_tokenizer(demo_path)
    assert tokenizer.chat_template
    assert tokenizer.decode(tokenizer.encode("Hello world")).endswith("Hello world")


PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf_logits(demo_path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    token_ids = get_tokenizer(demo_path).encode(PROMPT)
    hf_model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(demo_path), gguf_file=os.path.basename(demo_path),
        dtype=torch.float32).eval()
    with torch.inference_mode():
        return hf_model(torch.tensor([token_ids])).logits[0]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["gguf file", "converted folder"])
def test_logits_match_hf(demo_path, demo_model_dir, hf_logits, source):
    """From the .gguf file: float32 throughout. From the converted folder: the prompt's
    few tokens multiply on the GGUF blocks (tests/model_executor/test_gguf_blocks.py)."""
    path = demo_path if source == "gguf file" else demo_model_dir
    ours = get_model(path, get_hf_config(path), torch.float32, "cpu")
    on_blocks = [m for m in ours.modules() if getattr(m, "packed", None) is not None]
    assert bool(on_blocks) == (source == "converted folder")
    token_ids = get_tokenizer(demo_path).encode(PROMPT)
    with torch.inference_mode():
        logits = ours.compute_logits(ours(torch.tensor(token_ids),
                                          torch.arange(len(token_ids))))
    torch.testing.assert_close(logits, hf_logits, atol=1e-3, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), hf_logits.argmax(-1))
