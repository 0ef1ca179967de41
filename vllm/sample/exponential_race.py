"""Random sampling by an exponential race (Gumbel-max) over counter-based noise.

Each token i of a row gets a key ``logit_i - log(E_i)``, ``E_i = -log(u_i)`` an Exp(1)
draw, and the row takes the lowest index among its largest keys: token i wins with
probability ``softmax(logits)_i`` (the race ``argmax_i p_i / E_i``, in logs). The uniforms
``u_i`` come from a counter-based generator (vllm/sample/counter_rng.py) keyed by the row's
seed and position (its number of output tokens so far), so a seeded request draws the
same tokens from the same logits whatever batch or step it is sampled in, and there is no
generator state to keep or advance.

Why not an inverse CDF: there one uniform is compared against a cumulative sum over the
whole vocabulary, whose rounding (~49k additions) moves every boundary, and two
computations of the same logits that differ in a last bit can pick different tokens. Here
the decision compares per-token keys: it changes only when the two best keys are within
that last bit of each other.

``exponential_race_sample`` runs the C++ kernel (``torch.ops._C_<isa>.exponential_race_sample``)
on float32 CPU logits when a kernel build is installed, else the PyTorch version below,
which computes the same integers and the same float formula: the two pick the same token
except where the two best keys are within a few float32 ulps (their logs may round
differently).
"""

import torch

from vllm.platforms.cpu_isa import kernel_ops
from vllm.sample.counter_rng import token_streams, token_uniforms

_OPS = kernel_ops()
HAS_CPU_KERNEL = _OPS is not None and hasattr(_OPS, "exponential_race_sample")


def exponential_race_sample(
    logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """One token per row of (B, V) logits with (B,) int64 seeds and positions; (B,) int64.

    Filtered tokens (-inf) and NaN never win; a row with no key above -inf gets token 0.
    """
    if HAS_CPU_KERNEL and logits.device.type == "cpu" and logits.dtype == torch.float32:
        out = torch.empty(logits.shape[0], dtype=torch.int64)  # (B,)
        _OPS.exponential_race_sample(
            out, logits if logits.stride(-1) == 1 else logits.contiguous(),
            seeds.contiguous(), positions.contiguous(),
        )
        return out
    return exponential_race_sample_reference(logits, seeds, positions)


def exponential_race_sample_reference(
    logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The plain PyTorch race, for any device; (B,) int64."""
    keys = race_keys(logits, seeds, positions)  # (B, V)
    return keys.argmax(dim=-1)  # (B,), the first of equal keys


def race_keys(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, V) float32 keys ``logits + gumbel_noise``; NaN logits give -inf keys."""
    logits = logits.float()  # (B, V)
    noise = gumbel_noise(seeds.to(logits.device), positions.to(logits.device), logits.shape[1])
    keys = logits + noise  # (B, V)
    return keys.masked_fill(keys.isnan(), float("-inf"))  # (B, V)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) float32 ``-log(-log(u))`` of each row's counter-based uniforms."""
    uniforms = token_uniforms(token_streams(seeds, positions), vocab_size)  # (B, V), in (0, 1)
    return -torch.log(-torch.log(uniforms))  # (B, V)
