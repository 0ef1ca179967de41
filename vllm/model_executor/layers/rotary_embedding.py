"""Rotary position embedding (neox style: each head's halves are rotated as pairs; DeepSeek's
interleaved pairs are first laid out as halves)."""
import math
from typing import Any, Optional

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class RotaryEmbedding(nn.Module):
    """Rotates the first `rotary_dim` channels of every head by position-dependent angles.

    The cos/sin table covers positions [0, max_position) and is built once, both scaled by
    `magnitude` (YaRN's attention factor).
    """

    def __init__(self, head_size: int, rotary_dim: int, max_position: int,
                 inv_freq: torch.Tensor, magnitude: float = 1.0):
        super().__init__()
        if rotary_dim % 2 or not 0 < rotary_dim <= head_size:
            raise ValueError(f"rotary_dim must be even and in (0, {head_size}], got {rotary_dim}")
        if inv_freq.shape != (rotary_dim // 2,):
            raise ValueError(f"inv_freq must have {rotary_dim // 2} entries, got "
                             f"{tuple(inv_freq.shape)}")
        if max_position < 1:
            raise ValueError(f"max_position must be >= 1, got {max_position}")
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        positions = torch.arange(max_position, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq.float())  # (max_position, rotary_dim / 2)
        cache = torch.cat([angles.cos(), angles.sin()], dim=-1) * magnitude  # (max_pos, rotary_dim)
        self.register_buffer("cos_sin_cache", cache.to(torch.get_default_dtype()),
                             persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles for `positions` (T,), each (T, 1, rotary_dim / 2), ready for `rotate_`."""
        cos_sin = self.cos_sin_cache.index_select(0, positions)  # (T, rotary_dim)
        cos, sin = cos_sin.unsqueeze(1).chunk(2, dim=-1)  # (T, 1, rotary_dim / 2) each
        return cos, sin

    def rotate_(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        """Rotate x (T, num_heads * head_size) in place, any number of heads; returns x."""
        cos, sin = cos_sin
        heads = x.view(x.shape[0], -1, self.head_size)  # (T, num_heads, head_size)
        half = self.rotary_dim // 2
        x1 = heads[..., :half]  # (T, num_heads, rotary_dim / 2)
        x2 = heads[..., half:self.rotary_dim]  # (T, num_heads, rotary_dim / 2)
        x1_sin = x1 * sin
        x1.mul_(cos).addcmul_(x2, sin, value=-1.0)  # x1 cos - x2 sin
        x2.mul_(cos).add_(x1_sin)  # x2 cos + x1 sin
        return x

    def rotated(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
                interleaved: bool = False) -> torch.Tensor:
        """x (T, heads, rotary_dim) rotated, a new tensor. `interleaved`: x's channels are
        pairs (x0, x1), (x2, x3), ... (DeepSeek); the result is laid out [rotated evens,
        rotated odds], as transformers returns it (any layout shared by q and k gives the
        same scores)."""
        cos, sin = cos_sin  # (T, 1, rotary_dim / 2) each
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]  # (T, heads, rotary_dim / 2) each
        else:
            x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q (T, num_heads * head_size) and k (T, num_kv_heads * head_size) in
        place for positions (T,); returns (q, k)."""
        if positions.numel() and int(positions.max()) >= self.max_position:
            raise ValueError(f"position {int(positions.max())} is beyond max_position "
                             f"{self.max_position}")
        cos_sin = self.cos_sin(positions)
        return self.rotate_(q, cos_sin), self.rotate_(k, cos_sin)

    def extra_repr(self) -> str:
        return (f"head_size={self.head_size}, rotary_dim={self.rotary_dim}, "
                f"max_position={self.max_position}")


def rope_parameters_from_config(config: Any) -> dict[str, Any]:
    """The RoPE settings of a Hugging Face config as one flat dict with "rope_type"
    and "rope_theta", from `rope_parameters` (transformers 5) or the older
    `rope_theta` / `rope_scaling` fields."""
    params = dict(getattr(config, "rope_parameters", None) or
                  getattr(config, "rope_scaling", None) or {})
    if params and all(isinstance(value, dict) for value in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    params["rope_theta"] = (params.get("rope_theta") or getattr(config, "rope_theta", None)
                            or 10000.0)
    return params


def get_rope(head_size: int, max_position: int, rope_parameters: dict[str, Any],
             rotary_dim: Optional[int] = None) -> RotaryEmbedding:
    """Build the rotary embedding for `rope_parameters` (see rope_parameters_from_config)."""
    partial = rope_parameters.get("partial_rotary_factor", 1.0)
    rotary_dim = rotary_dim or int(head_size * partial)
    inv_freq, magnitude = rope_frequencies(rope_parameters, rotary_dim, max_position)
    return RotaryEmbedding(head_size, rotary_dim, max_position, inv_freq, magnitude)


def rope_frequencies(rope_parameters: dict[str, Any], rotary_dim: int,
                     max_position: int) -> tuple[torch.Tensor, float]:
    """(inv_freq (rotary_dim / 2,), magnitude of cos and sin) for `rope_parameters`;
    ValueError for an unsupported rope type or a missing parameter."""
    base = float(rope_parameters.get("rope_theta", 10000.0))
    inv_freq = default_inv_freq(base, rotary_dim)
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type == "linear":
        return inv_freq / _required(rope_parameters, "factor", rope_type), 1.0
    if rope_type == "llama3":
        return llama3_inv_freq(inv_freq, rope_parameters, max_position), 1.0
    if rope_type == "yarn":
        return yarn_inv_freq(inv_freq, rope_parameters, base, max_position)
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}; supported: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    return inv_freq, 1.0


def default_inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (base ** exponents)  # (rotary_dim / 2,)


def llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any],
                    max_position: int) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths slowed by `factor`, short ones
    kept, the band between interpolated smoothly."""
    factor = _required(params, "factor", "llama3")
    low_freq_factor = _required(params, "low_freq_factor", "llama3")
    high_freq_factor = _required(params, "high_freq_factor", "llama3")
    old_context = params.get("original_max_position_embeddings") or max_position
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, smoothed)
    return torch.where(wavelen < high_freq_wavelen, inv_freq, scaled)


def yarn_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any], base: float,
                  max_position: int) -> tuple[torch.Tensor, float]:
    """YaRN: wavelengths longer than the original context are slowed by `factor`, short
    ones kept, a linear ramp between (in frequency index, from beta_fast to beta_slow
    rotations over the original context); cos and sin scaled by the attention factor."""
    original = _required(params, "original_max_position_embeddings", "yarn")
    factor = float(params.get("factor") or max_position / original)
    rotary_dim = 2 * inv_freq.shape[0]
    low = _yarn_frequency_index(params.get("beta_fast") or 32, rotary_dim, base, original)
    high = _yarn_frequency_index(params.get("beta_slow") or 1, rotary_dim, base, original)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    span = (high - low) or 0.001
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / span).clamp(0, 1)
    scaled = inv_freq / factor * ramp + inv_freq * (1 - ramp)  # (rotary_dim / 2,)
    return scaled, yarn_attention_factor(params, factor)


def _yarn_frequency_index(rotations: float, rotary_dim: int, base: float,
                          context: float) -> float:
    """The (fractional) frequency index that turns `rotations` times over `context`."""
    return rotary_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context stretched `factor` times."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _required(params: dict[str, Any], key: str, rope_type: str) -> float:
    if params.get(key) is None:
        raise ValueError(f"rope_type {rope_type!r} needs {key!r} in the rope parameters")
    return float(params[key])

