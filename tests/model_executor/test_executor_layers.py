"""Layer-level checks: rotary embedding, fused residual RMSNorm, SiluAndMul."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding import get_rope, rope_parameters_from_config


def test_rotary_forward_matches_hf():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    rope = get_rope(16, 64, rope_parameters_from_config(config))
    positions = torch.tensor([5, 0, 63, 7])
    q, k = torch.randn(4, 4 * 16), torch.randn(4, 2 * 16)
    q_hf, k_hf = q.view(1, 4, 4, 16).transpose(1, 2), k.view(1, 4, 2, 16).transpose(1, 2)
    cos, sin = LlamaRotaryEmbedding(config)(q_hf, positions[None])
    q_hf, k_hf = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)
    q_out, k_out = rope(positions, q.clone(), k.clone())
    torch.testing.assert_close(q_out, q_hf.transpose(1, 2).reshape(4, 64))
    torch.testing.assert_close(k_out, k_hf.transpose(1, 2).reshape(4, 32))
    with pytest.raises(ValueError, match="max_position"):
        rope(torch.tensor([64]), q[:1].clone(), k[:1].clone())


def test_rope_parameters_old_and_new_fields():
    old = SimpleNamespace(rope_theta=1234.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_parameters_from_config(old) == {"type": "linear", "factor": 2.0,
                                               "rope_type": "linear", "rope_theta": 1234.0}
    new = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 5.0})
    assert rope_parameters_from_config(new)["rope_theta"] == 5.0
    assert rope_parameters_from_config(SimpleNamespace()) == {"rope_type": "default",
                                                              "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'.*llama3"):
        get_rope(16, 8, {"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="needs 'low_freq_factor'"):
        get_rope(16, 8, {"rope_type": "llama3", "factor": 4.0})


def test_rms_norm_with_residual():
    norm = RMSNorm(8, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    x, residual = torch.randn(3, 8), torch.randn(3, 8)
    expected_sum = x + residual
    expected = norm.weight * expected_sum * torch.rsqrt(
        expected_sum.pow(2).mean(-1, keepdim=True) + 1e-5)
    out, new_residual = norm(x.clone(), residual)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(new_residual, expected_sum)
    torch.testing.assert_close(norm(expected_sum), expected)


def test_silu_and_mul():
    x = torch.randn(3, 10)
    expected = F.silu(x[:, :5]) * x[:, 5:]
    torch.testing.assert_close(SiluAndMul()(x.clone()), expected)
