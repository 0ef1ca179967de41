"""Tiny random Hugging Face checkpoints for the model executor tests."""
import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers import LlamaForCausalLM as HFLlama
from transformers import Qwen2ForCausalLM as HFQwen2

from vllm.distributed.parallel_state import destroy_tensor_parallel

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6)


def make_tiny_config(arch: str, **overrides):
    config_cls = {"LlamaForCausalLM": LlamaConfig, "Qwen2ForCausalLM": Qwen2Config}[arch]
    return config_cls(**{**TINY, "architectures": [arch], **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Noticeable random values everywhere (HF initialises norms to 1, biases to 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)


def build_hf_model(config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    hf_cls = HFQwen2 if config.architectures == ["Qwen2ForCausalLM"] else HFLlama
    model = hf_cls(config).eval()
    randomize_(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.fixture
def tiny_config():
    """tiny_config(arch, **overrides) -> a 2-layer HF config of that architecture."""
    return make_tiny_config


@pytest.fixture
def save_hf_model():
    """save_hf_model(config, folder, seed=0, **save_kwargs) -> the saved random HF model."""
    def save(config, folder, seed: int = 0, **save_kwargs) -> torch.nn.Module:
        model = build_hf_model(config, seed)
        model.save_pretrained(folder, **save_kwargs)
        return model
    return save


@pytest.fixture
def tp_state():
    """Lets a test set a simulated tensor-parallel rank; restores rank 0 of 1 after."""
    yield
    destroy_tensor_parallel()
