"""A counter-based random number generator on int64 tensors: the uniforms of a draw are a
pure function of (seed, position, token), so nothing is stored or advanced between steps.

It is splitmix64 (Steele, Lea and Flood, OOPSLA 2014) addressed by index: output k of the
stream started at ``state`` is ``mix64(state + k * GOLDEN)``. A draw's stream is output
``position + 1`` of the stream started at ``seed``; its word k is output ``k + 1`` of that
stream and gives tokens 2k and 2k + 1 the top 24 bits of its high and low 32-bit halves,
as ``(2 * (bits >> 1) + 1) / 2**24`` (24 bits): exact in float32 and strictly inside
(0, 1). The C++ kernels compute the same words (csrc/cpu/counter_rng.h).

int64 tensors stand for 64-bit words: addition and multiplication wrap modulo 2**64 as
two's complement, so only right shifts need care (they sign-extend; the masks below make
them logical).
"""

import torch

_WORD = 1 << 64


def _signed(word: int) -> int:
    """A 64-bit word as the int64 with the same bits."""
    return word - _WORD if word >= 1 << 63 else word


GOLDEN = _signed(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, splitmix64's step
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_UNIFORM_BITS = 24


def _shift_right(words: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 words."""
    return (words >> shift) & ((1 << (64 - shift)) - 1)


def mix64(words: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function, elementwise on int64 words."""
    words = (words ^ _shift_right(words, 30)) * _MIX1
    words = (words ^ _shift_right(words, 27)) * _MIX2
    return words ^ _shift_right(words, 31)


def splitmix64_at(states: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Output ``counters`` (>= 1) of the streams started at ``states`` (broadcast)."""
    return mix64(states + counters * GOLDEN)


def token_streams(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B,) int64 stream of each row's draw from its (B,) seeds and (B,) positions."""
    return splitmix64_at(seeds, positions + 1)  # (B,)


def token_uniforms(streams: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) float32 uniforms in (0, 1) of every token of each row's draw."""
    num_words = (vocab_size + 1) // 2
    counters = torch.arange(1, num_words + 1, dtype=torch.int64, device=streams.device)  # (W,)
    words = splitmix64_at(streams[:, None], counters[None, :])  # (B, W)
    high = _shift_right(words, 64 - _UNIFORM_BITS)  # (B, W), bits 63..40
    low = (words >> (32 - _UNIFORM_BITS)) & ((1 << _UNIFORM_BITS) - 1)  # (B, W), bits 31..8
    bits = torch.stack([high, low], dim=-1).flatten(1)[:, :vocab_size]  # (B, V), even: high
    return (bits | 1).float() * 2.0**-_UNIFORM_BITS  # (B, V), odd integers < 2**24: exact
