"""The counter-based generator on int64 tensors against splitmix64 on Python integers."""

import torch

from vllm.sample.counter_rng import mix64, splitmix64_at, token_streams, token_uniforms

WORD = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64_exact(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & WORD
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & WORD
    return z ^ (z >> 31)


def as_word(value: int) -> int:
    return value & WORD


def test_first_outputs_of_splitmix64_seeded_zero():
    # the published first outputs of splitmix64 from state 0
    words = splitmix64_at(torch.zeros(3, dtype=torch.int64), torch.tensor([1, 2, 3]))  # (3,)
    assert [as_word(w) for w in words.tolist()] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
    ]


def test_mix64_matches_python_integers_on_edge_and_random_words():
    generator = torch.Generator().manual_seed(0)
    edges = [0, 1, -1, 2**63 - 1, -(2**63), 2**62, -(2**62) - 1]
    random = torch.randint(-(2**63), 2**63 - 1, (1000,), generator=generator).tolist()
    words = torch.tensor(edges + random, dtype=torch.int64)  # (N,)
    got = [as_word(w) for w in mix64(words).tolist()]
    assert got == [mix64_exact(as_word(w)) for w in edges + random]


def test_uniforms_follow_the_documented_formula():
    seeds = torch.tensor([0, 7, -5, 2**63 - 1], dtype=torch.int64)  # (B,)
    positions = torch.tensor([0, 3, 1000, 2**40], dtype=torch.int64)  # (B,)
    uniforms = token_uniforms(token_streams(seeds, positions), 51)  # (B, V)
    for row, (seed, position) in enumerate(zip(seeds.tolist(), positions.tolist())):
        stream = mix64_exact(as_word(as_word(seed) + (position + 1) * GOLDEN))
        for token in (0, 1, 2, 49, 50):
            word = mix64_exact(as_word(stream + (token // 2 + 1) * GOLDEN))
            half = word >> 32 if token % 2 == 0 else word & 0xFFFFFFFF
            assert uniforms[row, token].item() == (2 * (half >> 9) + 1) / 2**24


def test_uniforms_are_strictly_inside_the_unit_interval_and_look_uniform():
    streams = token_streams(torch.arange(64), torch.arange(64) * 3)  # (B,)
    uniforms = token_uniforms(streams, 4096).double()  # (B, V)
    assert uniforms.min() >= 2**-24 and uniforms.max() <= 1 - 2**-24
    assert ((uniforms * 2**24) % 2 == 1).all()  # odd multiples of 2^-24
    count = uniforms.numel()
    assert abs(uniforms.mean().item() - 0.5) < 5 * (1 / 12 / count) ** 0.5
    deciles = torch.histc(uniforms, bins=10, min=0, max=1)  # (10,)
    assert ((deciles - count / 10).abs() < 5 * (count * 0.09) ** 0.5).all()


def test_neighbouring_seeds_and_positions_give_unrelated_streams():
    seeds = torch.tensor([1234, 1235, 1234, 1234], dtype=torch.int64)  # (B,)
    positions = torch.tensor([0, 0, 1, 2], dtype=torch.int64)  # (B,)
    uniforms = token_uniforms(token_streams(seeds, positions), 20000)  # (B, V)
    correlation = torch.corrcoef(uniforms.double())  # (B, B)
    off_diagonal = correlation - torch.eye(4, dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.04  # 5 standard deviations of 20000 samples
