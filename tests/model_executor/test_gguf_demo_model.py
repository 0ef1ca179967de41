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


@pytest.mark.slow
def test_logits_match_hf(demo_path):
    from transformers import AutoModelForCausalLM
    config = get_hf_config(demo_path)
    ours = get_model(demo_path, config, torch.float32, "cpu")
    token_ids = get_tokenizer(demo_path).encode("The capital of France is")
    with torch.inference_mode():
        logits = ours.compute_logits(ours(torch.tensor(token_ids),
                                          torch.arange(len(token_ids))))
    del ours
    hf_model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(demo_path), gguf_file=os.path.basename(demo_path),
        dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf_model(torch.tensor([token_ids])).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-4)
    assert logits[-1].argmax() == expected[-1].argmax()
