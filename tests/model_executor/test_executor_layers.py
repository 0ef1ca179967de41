"""Layer-level checks: rotary embedding, fused residual RMSNorm, SiluAndMul."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding import (
    get_rope, rope_frequencies, rope_parameters_from_config)


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
    with pytest.raises(ValueError, match="unsupported rope_type 'longrope'.*yarn"):
        get_rope(16, 8, {"rope_type": "longrope", "factor": 4.0})
    with pytest.raises(ValueError, match="needs 'low_freq_factor'"):
        get_rope(16, 8, {"rope_type": "llama3", "factor": 4.0})
    with pytest.raises(ValueError, match="needs 'original_max_position_embeddings'"):
        get_rope(16, 8, {"rope_type": "yarn", "factor": 4.0})


@pytest.mark.parametrize("extra", [
    {},
    {"mscale": 1.0, "mscale_all_dim": 0.7},
    {"beta_fast": 16.0, "beta_slow": 2.0, "truncate": False},
    {"attention_factor": 1.3},
])
def test_yarn_frequencies_and_magnitude_match_transformers(extra):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
              "original_max_position_embeddings": 4096, **extra}
    config = LlamaConfig(hidden_size=512, num_attention_heads=8, head_dim=64,
                         max_position_embeddings=163840, rope_parameters=params)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    ours, magnitude = rope_frequencies(rope_parameters_from_config(config), 64, 163840)
    torch.testing.assert_close(ours, inv_freq, rtol=1e-6, atol=0)
    assert magnitude == pytest.approx(attention_factor, rel=1e-12)
    rope = get_rope(64, 4096, rope_parameters_from_config(config))
    positions = torch.tensor([0, 1, 7, 30])
    angles = positions[:, None].float() * inv_freq  # (4, 32)
    cos, sin = rope.cos_sin(positions)
    torch.testing.assert_close(cos[:, 0], angles.cos() * attention_factor)
    torch.testing.assert_close(sin[:, 0], angles.sin() * attention_factor)


def test_interleaved_rotation_matches_deepseek():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        apply_rotary_pos_emb_interleave)
    rope = get_rope(8, 64, {"rope_type": "default", "rope_theta": 10000.0})
    positions = torch.tensor([3, 0, 17])
    q, k = torch.randn(3, 2, 8), torch.randn(3, 1, 8)
    cos, sin = rope.cos_sin(positions)  # (T, 1, 4)
    cos_hf, sin_hf = torch.cat([cos, cos], -1)[None, :, 0], torch.cat([sin, sin], -1)[None, :, 0]
    q_hf, k_hf = apply_rotary_pos_emb_interleave(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                 cos_hf, sin_hf)
    torch.testing.assert_close(rope.rotated(q, (cos, sin), interleaved=True),
                               q_hf[0].transpose(0, 1))
    torch.testing.assert_close(rope.rotated(k, (cos, sin), interleaved=True),
                               k_hf[0].transpose(0, 1))


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
