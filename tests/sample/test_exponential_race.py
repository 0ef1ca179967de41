"""The exponential race: its distribution, determinism, filtering, robustness to last-bit
changes, and the C++ kernels (every build installed) against the PyTorch version."""

import math

import pytest
import torch

from vllm.platforms.cpu_isa import built_isas, load_ops
from vllm.sample.exponential_race import (
    exponential_race_sample,
    exponential_race_sample_reference,
    race_keys,
)

INF = math.inf
KERNEL_ISAS = [isa for isa in built_isas() if hasattr(load_ops(isa), "exponential_race_sample")]
RACES = [pytest.param(exponential_race_sample_reference, id="reference")] + [
    pytest.param(lambda logits, seeds, positions, isa=isa: kernel_race(isa, logits, seeds, positions),
                 id=isa)
    for isa in KERNEL_ISAS
]
needs_kernel = pytest.mark.skipif(not KERNEL_ISAS, reason="no CPU kernel build installed")


def kernel_race(isa: str, logits, seeds, positions) -> torch.Tensor:
    out = torch.empty(logits.shape[0], dtype=torch.int64)  # (B,)
    load_ops(isa).exponential_race_sample(out, logits, seeds, positions)
    return out


def random_inputs(rows: int, vocab: int, seed: int, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator) * scale  # (B, V)
    seeds = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator)  # (B,)
    positions = torch.randint(0, 10**6, (rows,), generator=generator)  # (B,)
    return logits, seeds, positions


def clear_winners(keys: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """(B,) bool: rows whose best key beats the second by more than ``margin`` (relative)."""
    top2 = keys.topk(2, dim=-1).values  # (B, 2)
    return top2[:, 0] - top2[:, 1] > margin * top2[:, 0].abs().clamp(min=1.0)


# ---------------------------------------------------------------- distribution


@pytest.mark.parametrize("race", RACES)
def test_draws_over_positions_follow_the_softmax(race):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -INF, 1.5, -3.0])  # (V,)
    draws = 40000
    rows = logits.expand(draws, -1).contiguous()  # (N, V)
    seeds = torch.full((draws,), 1234, dtype=torch.int64)  # (N,)
    tokens = race(rows, seeds, torch.arange(draws))  # (N,)
    counts = torch.bincount(tokens, minlength=10).double()  # (V,)
    expected = logits.softmax(dim=-1).double() * draws  # (V,)
    assert counts[7] == 0
    kept = expected > 0
    chi_square = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum().item()
    assert chi_square < 33.7  # 8 degrees of freedom: P(chi^2 > 33.7) = 5e-5


@pytest.mark.parametrize("race", RACES)
def test_draws_over_seeds_follow_the_softmax_on_a_large_vocabulary(race):
    vocab, draws = 4096, 20000
    logits = torch.full((vocab,), -INF)  # (V,)
    logits[:16] = torch.linspace(-2.0, 2.0, 16)
    logits[100:4096:100] = -1.0  # 40 more tokens scattered through the row
    rows = logits.expand(draws, -1).contiguous()  # (N, V)
    tokens = race(rows, torch.arange(draws) * 7919, torch.zeros(draws, dtype=torch.int64))
    counts = torch.bincount(tokens, minlength=vocab).double()  # (V,)
    expected = logits.softmax(dim=-1).double() * draws  # (V,)
    assert counts[expected == 0].sum() == 0
    kept = expected > 0
    chi_square = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum().item()
    assert chi_square < 104  # 55 degrees of freedom: P(chi^2 > 104) = 6e-5


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("race", RACES)
def test_a_draw_depends_only_on_its_row_seed_and_position(race):
    logits, seeds, positions = random_inputs(24, 3000, seed=1, scale=0.5)
    together = race(logits, seeds, positions)  # (B,)
    alone = [race(logits[i:i + 1], seeds[i:i + 1], positions[i:i + 1]).item() for i in range(24)]
    assert together.tolist() == alone
    order = torch.randperm(24, generator=torch.Generator().manual_seed(2))  # (B,)
    shuffled = race(logits[order], seeds[order], positions[order])  # (B,)
    assert shuffled.tolist() == together[order].tolist()
    assert race(logits, seeds, positions).tolist() == together.tolist()


@pytest.mark.parametrize("race", RACES)
def test_different_positions_and_seeds_draw_differently(race):
    vocab, draws = 1000, 200
    flat = torch.zeros(draws, vocab)  # (N, V), uniform over 1000 tokens
    seed = torch.full((draws,), 42, dtype=torch.int64)  # (N,)
    by_position = race(flat, seed, torch.arange(draws))  # (N,)
    by_seed = race(flat, torch.arange(draws) + 42, torch.zeros(draws, dtype=torch.int64))
    # 200 uniform draws from 1000 tokens repeat about 18 tokens
    assert len(set(by_position.tolist())) > 160
    assert len(set(by_seed.tolist())) > 160
    children = race(flat[:3], torch.tensor([7, 8, 9]), torch.zeros(3, dtype=torch.int64))
    assert len(set(children.tolist())) == 3  # n > 1 children take seed + index


# ---------------------------------------------------------------- filtering and edges


@pytest.mark.parametrize("race", RACES)
def test_filtered_and_nan_tokens_never_win(race):
    logits, seeds, positions = random_inputs(300, 2000, seed=3)
    generator = torch.Generator().manual_seed(4)
    allowed = torch.rand(300, 2000, generator=generator) < 0.01  # (B, V)
    allowed[:, 1999] = True
    nan = ~allowed & (torch.rand(300, 2000, generator=generator) < 0.5)  # (B, V)
    filtered = logits.masked_fill(~allowed, -INF).masked_fill(nan, float("nan"))  # (B, V)
    tokens = race(filtered, seeds, positions)  # (B,)
    assert allowed.gather(1, tokens[:, None]).all()
    one_left = torch.full((5, 2000), -INF)  # (B, V)
    one_left[torch.arange(5), torch.tensor([0, 7, 500, 1998, 1999])] = -1e30
    assert race(one_left, seeds[:5], positions[:5]).tolist() == [0, 7, 500, 1998, 1999]


@pytest.mark.parametrize("race", RACES)
def test_rows_without_a_candidate_take_token_0_and_infinities_win(race):
    logits = torch.tensor([
        [-INF, -INF, -INF, -INF],
        [float("nan"), -INF, float("nan"), -INF],
        [1.0, INF, 3e38, INF],
        [-3e38, -3e38, -INF, 5.0],
    ])  # (B, V)
    seeds = torch.tensor([1, 2, 3, 4])
    tokens = race(logits, seeds, torch.zeros(4, dtype=torch.int64)).tolist()
    assert tokens == [0, 0, 1, 3]
    single = race(torch.tensor([[0.0]]), seeds[:1], seeds[:1])
    assert single.tolist() == [0]


@needs_kernel
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_kernel_tokens_do_not_depend_on_the_thread_count(isa):
    logits, seeds, positions = random_inputs(4, 49151, seed=8, scale=0.5)  # an odd width
    threads = torch.get_num_threads()
    draws = []
    try:
        for count in (1, 2, 3, 5):  # one row: as many vocabulary slices as threads
            torch.set_num_threads(count)
            draws.append([kernel_race(isa, logits[i:i + 1], seeds[i:i + 1], positions[i:i + 1])
                          .item() for i in range(4)])
    finally:
        torch.set_num_threads(threads)
    assert all(tokens == draws[0] for tokens in draws)


@needs_kernel
@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_kernel_accepts_strided_rows_and_rejects_bad_shapes(isa):
    logits, seeds, positions = random_inputs(6, 9000, seed=5)
    wide = torch.zeros(6, 9100)  # (B, V + 100)
    wide[:, :9000] = logits
    strided = kernel_race(isa, wide[:, :9000], seeds, positions)  # (B,)
    assert strided.tolist() == kernel_race(isa, logits, seeds, positions).tolist()
    with pytest.raises(RuntimeError, match="float32"):
        kernel_race(isa, logits.double(), seeds, positions)
    with pytest.raises(RuntimeError, match="seeds"):
        kernel_race(isa, logits, seeds[:5], positions)
    with pytest.raises(RuntimeError, match="positions"):
        kernel_race(isa, logits, seeds, positions.int())


# ---------------------------------------------------------------- kernel against PyTorch


@needs_kernel
@pytest.mark.parametrize("isa", KERNEL_ISAS)
@pytest.mark.parametrize("rows, vocab, scale, filtered", [
    (400, 1000, 3.0, 0.0),     # rows >= threads: one work item per row
    (1, 49152, 2.0, 0.0),      # the vocabulary split over threads
    (3, 49152, 10.0, 0.9),     # peaked rows, mostly filtered: most tokens pruned
    (64, 5000, 0.01, 0.0),     # nearly flat rows: nothing pruned
    (64, 777, 30.0, 0.5),      # a width that is not a multiple of any block
])
def test_kernel_picks_the_reference_token(isa, rows, vocab, scale, filtered):
    logits, seeds, positions = random_inputs(rows, vocab, seed=rows + vocab, scale=scale)
    if filtered:
        drop = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(6)) < filtered
        logits = logits.masked_fill(drop, -INF)  # (B, V)
    keys = race_keys(logits, seeds, positions)  # (B, V)
    reference = keys.argmax(dim=-1)  # (B,)
    tokens = kernel_race(isa, logits, seeds, positions)  # (B,)
    clear = clear_winners(keys)  # (B,)
    assert clear.float().mean() > 0.9
    assert torch.equal(tokens[clear], reference[clear])
    # elsewhere the kernel's token is one of the near-tied best
    best = keys.gather(1, reference[:, None]).squeeze(1)  # (B,)
    chosen = keys.gather(1, tokens[:, None]).squeeze(1)  # (B,)
    assert (best - chosen <= 1e-4 * best.abs().clamp(min=1.0)).all()


def test_the_dispatcher_takes_any_float_dtype_and_layout():
    logits, seeds, positions = random_inputs(8, 3000, seed=7)
    expected = exponential_race_sample_reference(logits, seeds, positions)  # (B,)
    keys = race_keys(logits, seeds, positions)  # (B, V)
    clear = clear_winners(keys)  # (B,)
    transposed = logits.t().contiguous().t()  # (B, V), column-major
    for variant in (logits, transposed):
        assert torch.equal(exponential_race_sample(variant, seeds, positions)[clear],
                           expected[clear])
    as_double = exponential_race_sample(logits.double(), seeds, positions)  # the reference
    assert torch.equal(as_double, expected)


# ---------------------------------------------------------------- robustness


def one_ulp_perturbation(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """Each logit moved one float32 ulp up or down, or kept, at random."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randint(-1, 2, logits.shape, generator=generator)  # (V,) in {-1, 0, 1}
    up = torch.nextafter(logits, torch.full_like(logits, INF))  # (V,)
    down = torch.nextafter(logits, torch.full_like(logits, -INF))  # (V,)
    return torch.where(direction > 0, up, torch.where(direction < 0, down, logits))  # (V,)


def race_in_chunks(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor):
    """(N,) draws from one (V,) row, 100 at a time (the PyTorch version's memory)."""
    chunks = [exponential_race_sample(logits.expand(len(s), -1), s, p)
              for s, p in zip(seeds.split(100), positions.split(100))]
    return torch.cat(chunks)  # (N,)


def inverse_cdf_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The former sampler: (N,) draws against the cumulative softmax of one (V,) row."""
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (V,)
    targets = uniforms * cdf[-1]  # (N,)
    return torch.searchsorted(cdf, targets, right=True).clamp(max=logits.shape[0] - 1)  # (N,)


def test_a_last_bit_change_of_the_logits_almost_never_moves_a_draw():
    vocab, draws = 49152, 1000
    flips_race, flips_cdf = 0, 0
    for row_seed in range(3):
        logits = torch.randn(vocab, generator=torch.Generator().manual_seed(row_seed)) * 2.0
        perturbed = one_ulp_perturbation(logits, seed=100 + row_seed)  # (V,)
        seeds = torch.full((draws,), 1000 + row_seed, dtype=torch.int64)  # (N,)
        positions = torch.arange(draws)  # (N,)
        before = race_in_chunks(logits, seeds, positions)  # (N,)
        after = race_in_chunks(perturbed, seeds, positions)  # (N,)
        flips_race += (before != after).sum().item()
        uniforms = torch.rand(draws, generator=torch.Generator().manual_seed(row_seed))  # (N,)
        flips_cdf += (inverse_cdf_tokens(logits, uniforms)
                      != inverse_cdf_tokens(perturbed, uniforms)).sum().item()
    # a draw moves only when the two best keys are within an ulp: about 1e-6 of draws
    assert flips_race <= 1, flips_race
    assert flips_cdf > flips_race, (flips_cdf, flips_race)
