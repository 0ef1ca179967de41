"""Property tests: the Sampler against a float64 reference, over every accepted value."""

import math
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vllm.sample import Sampler, SamplingMetadata
from vllm.sampling_params import SamplingParams

INF = math.inf
F32_MAX = torch.finfo(torch.float32).max
TAIL = -80.0  # log-weights below this are < 2e-35: float32 may keep or drop such tokens
MASS_SLACK = 1e-4  # float32 error allowed on a top_p mass
COPIES = 16  # copies of each row in a batch, so each example checks several draws
SETTINGS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------- the reference


def f32(value: float) -> float:
    """Round to the nearest float32 (overflow gives inf), as the sampler stores values."""
    return torch.tensor(value, dtype=torch.float64).float().item()


def _sanitised(raw: list[float]) -> list[float]:
    return [-INF if math.isnan(value) else value for value in raw]


def _first_argmax(values: list[float]) -> int:
    return values.index(max(values))


def _penalised(value: float, penalty: float) -> float:
    if value == 0 or math.isinf(value):  # fixed points of every penalty
        return value
    if value > 0:
        return INF if penalty == 0 else f32(value / penalty)
    return f32(value * penalty)


def reference_logits(row: "Row") -> list[float]:
    """min_tokens blocking, logit bias, then penalties, each result rounded to float32.

    NaN counts as -inf (a blocked token); a blocked token stays blocked.
    """
    p, x = row.params, _sanitised(row.raw)
    if len(row.output) < p.min_tokens:
        blocked = set(p.stop_token_ids)
        if row.eos is not None and not p.ignore_eos:
            blocked.add(row.eos)
        for token in blocked:
            x[token] = -INF
    for token, bias in (p.logit_bias or {}).items():
        x[token] = f32(x[token] + f32(bias))
    penalty = f32(p.repetition_penalty)
    for token in set(row.prompt + row.output):
        x[token] = _penalised(x[token], penalty)
    frequency, presence = f32(p.frequency_penalty), f32(p.presence_penalty)
    for token in set(row.output):
        frequency_term = f32(frequency * row.output.count(token))
        x[token] = f32(f32(x[token] - frequency_term) - presence)
    return x


def reference_greedy(row: "Row") -> int:
    """The first maximal processed logit; the raw argmax when every one is -inf."""
    x = reference_logits(row)
    if max(x) == -INF:
        return _first_argmax(_sanitised(row.raw))
    return _first_argmax(x)


@dataclass
class Support:
    """What a correct float32 sampler draws from, per the exact math.

    ``ideal``: the kept set in exact arithmetic (ties broken by token id), with
    ``probs`` its renormalised probabilities. ``may``: every token a float32
    sampler may return (near-ties and near-thresholds either way). ``sure``:
    the tokens it must keep.
    """

    ideal: list[int]
    may: set[int]
    sure: set[int]
    probs: dict[int, float]
    weights: list[float]

    def ambiguous_mass(self) -> float:
        may_mass = sum(self.weights[t] for t in self.may)
        return sum(self.weights[t] for t in self.may - self.sure) / may_mass


def _tol(z: float) -> float:
    return 1e-5 * abs(z) + 1e-5


def _surely_above(z: list[float], i: int, t: int) -> bool:
    return z[i] - z[t] > _tol(z[i]) + _tol(z[t])


def _scaled(x: list[float], temperature: float) -> list[float]:
    """Exact (x - max) / T; +inf logits tie at 0 and push every other token to -inf."""
    top = max(x)
    if top == INF:
        return [0.0 if value == INF else -INF for value in x]
    return [(value - top) / temperature for value in x]


def _min_p_sets(z: list[float], min_p: float) -> tuple[list[int], list[int], list[int]]:
    finite = [i for i, value in enumerate(z) if value > -INF]
    if min_p == 0:
        return finite, finite, finite
    cut = math.log(min_p)
    ideal = [i for i in finite if z[i] >= cut]
    may = [i for i in finite if z[i] >= cut - _tol(z[i]) or z[i] < TAIL]
    sure = [i for i in finite if z[i] == 0 or (z[i] >= cut + _tol(z[i]) and z[i] >= TAIL)]
    return ideal, may, sure


def _top_k_sets(z, k, ideal, may, sure):
    ranked = sorted(ideal, key=lambda i: (-z[i], i))
    may_k = [t for t in may if sum(_surely_above(z, i, t) for i in sure if i != t) < k]
    sure_k = [t for t in sure if sum(not _surely_above(z, t, j) for j in may if j != t) < k]
    return ranked[:k], may_k, sure_k


def _top_p_sets(z, w, top_p, ideal, may, sure):
    total = sum(w[i] for i in ideal)
    kept, mass = [], 0.0
    for position, token in enumerate(ideal):  # ideal is ranked
        if position > 0 and mass >= top_p:
            break
        kept.append(token)
        mass += w[token] / total
    may_total = sum(w[i] for i in may)
    may_p = []
    for t in may:
        lower = sum(w[i] for i in sure if _surely_above(z, i, t)) / may_total
        if lower < top_p + MASS_SLACK:
            may_p.append(t)
    sure_total = sum(w[i] for i in sure)  # > 0 whenever sure is not empty: it holds the top
    sure_p = []
    for t in sure:
        rivals = [j for j in may if j != t and not _surely_above(z, t, j)]
        upper = sum(w[j] for j in rivals) / sure_total
        if not rivals or upper < top_p - MASS_SLACK:
            sure_p.append(t)
    return kept, may_p, sure_p


def reference_support(row: "Row") -> Support:
    """Temperature, min_p, top_k, top_p in exact arithmetic on the processed logits."""
    p, x, vocab = row.params, reference_logits(row), len(row.raw)
    if max(x) == -INF:
        fallback = _first_argmax(_sanitised(row.raw))
        weights = [1.0 if i == fallback else 0.0 for i in range(vocab)]
        return Support([fallback], {fallback}, {fallback}, {fallback: 1.0}, weights)
    z = _scaled(x, min(f32(p.temperature), F32_MAX))
    w = [math.exp(value) for value in z]
    sets = _min_p_sets(z, f32(p.min_p))
    k = p.top_k if 0 < p.top_k < vocab else vocab
    sets = _top_k_sets(z, k, *sets)
    ideal, may, sure = _top_p_sets(z, w, f32(p.top_p), *sets)
    total = sum(w[i] for i in ideal)
    probs = {i: w[i] / total for i in ideal}
    return Support(ideal, {i for i in may if w[i] > 0}, set(sure), probs, w)


# ---------------------------------------------------------------- inputs


@dataclass
class Row:
    raw: list[float]  # float32 values of the logits row (after the dtype round trip)
    params: SamplingParams
    prompt: list[int]
    output: list[int]
    eos: int | None


SPECIAL_LOGITS = [INF, -INF, 3e38, -3e38, F32_MAX, -F32_MAX, 0.0, -0.0, 1e-45, -1e-45,
                  1e-40, 100.0, -100.0]
logits_values = st.one_of(
    st.floats(-30, 30, width=32),
    st.sampled_from(SPECIAL_LOGITS),
    st.floats(width=32),  # any float32, nan and inf included
)
temperatures = st.one_of(
    st.sampled_from([0.0, 5e-324, 1e-5, 1.0, 3.0, 1e30, 1e38, 1e39, 1e308]),
    st.floats(0, 1e-5),
    st.floats(min_value=0, allow_infinity=False),
)
top_ps = st.one_of(
    st.sampled_from([5e-324, 1e-45, 1e-38, 0.5, 1.0]), st.floats(0, 1, exclude_min=True)
)
min_ps = st.one_of(st.sampled_from([0.0, 5e-324, 1e-45, 1e-30, 1.0]), st.floats(0, 1))
repetition_penalties = st.one_of(
    st.sampled_from([5e-324, 1e-45, 1e-38, 0.5, 1.0, 2.0, 3e38, 1e39, 1e308]),
    st.floats(min_value=0, exclude_min=True, allow_infinity=False),
)
penalties = st.one_of(st.sampled_from([-2.0, 0.0, 5e-324, 2.0]), st.floats(-2, 2))
biases = st.one_of(st.sampled_from([-100.0, 100.0]), st.floats(-100, 100))
seeds = st.one_of(st.none(), st.integers(0, 2**63 - 1))


@st.composite
def rows(draw, vocab: int, dtype: torch.dtype, logit=logits_values, temperature=temperatures,
         top_p=top_ps, min_p=min_ps, repetition=repetition_penalties, penalty=penalties,
         bias=biases, min_tokens=st.integers(0, 3), seed=seeds):
    token = st.integers(0, vocab - 1)
    values = draw(st.lists(logit, min_size=vocab, max_size=vocab))
    raw = torch.tensor(values, dtype=torch.float32).to(dtype).float().tolist()
    params = SamplingParams(
        temperature=draw(temperature),
        top_p=draw(top_p),
        top_k=draw(st.one_of(st.just(-1), st.integers(1, vocab + 1))),
        min_p=draw(min_p),
        repetition_penalty=draw(repetition),
        presence_penalty=draw(penalty),
        frequency_penalty=draw(penalty),
        logit_bias=draw(st.dictionaries(token, bias, max_size=2)) or None,
        min_tokens=draw(min_tokens),
        stop_token_ids=draw(st.lists(token, max_size=2)),
        ignore_eos=draw(st.booleans()),
        seed=draw(seed),
    )
    prompt = draw(st.lists(token, max_size=4))
    output = draw(st.lists(token, max_size=4))
    return Row(raw, params, prompt, output, draw(st.one_of(st.none(), token)))


@st.composite
def batches(draw, max_vocab: int = 8, max_rows: int = 3, **row_strategies):
    """Rows of one vocabulary size and dtype, sharing the first row's eos id."""
    vocab = draw(st.integers(2, max_vocab))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    count = draw(st.integers(1, max_rows))
    batch = draw(st.lists(rows(vocab, dtype, **row_strategies), min_size=count, max_size=count))
    return [Row(r.raw, r.params, r.prompt, r.output, batch[0].eos) for r in batch], dtype


def run_sampler(batch: list[Row], dtype: torch.dtype, steps: int = 1) -> list[list[int]]:
    """Sample ``steps`` times from the same logits; step s draws at each row's position + s
    (what a later step of the engine would use), so seeded rows draw afresh each step."""
    logits = torch.tensor([row.raw for row in batch], dtype=torch.float32).to(dtype)  # (B, V)
    metadata = SamplingMetadata.build(
        [row.params for row in batch], [row.prompt for row in batch],
        [row.output for row in batch], len(batch[0].raw),
        () if batch[0].eos is None else (batch[0].eos,),
    )
    sampler = Sampler()
    return [
        sampler(logits, replace(metadata, positions=metadata.positions + step))
        .sampled_token_ids.tolist()
        for step in range(steps)
    ]


def _copy(row: Row, **params) -> Row:
    clone = row.params.clone()
    for name, value in params.items():
        setattr(clone, name, value)
    return Row(row.raw, clone, row.prompt, row.output, row.eos)


# ---------------------------------------------------------------- properties


@settings(max_examples=300, **SETTINGS)
@given(batches())
def test_every_token_is_in_the_vocabulary_and_in_the_reference_support(drawn):
    batch, dtype = drawn
    copies = [row for row in batch for _ in range(COPIES)]
    (tokens,) = run_sampler(copies, dtype)
    for i, row in enumerate(batch):
        drawn_tokens = set(tokens[i * COPIES:(i + 1) * COPIES])
        assert all(0 <= token < len(row.raw) for token in drawn_tokens)
        if row.params.temperature < 1e-5:
            assert drawn_tokens == {reference_greedy(row)}, row
            continue
        support = reference_support(row)
        assert support.sure <= set(support.ideal), row  # the reference agrees with itself
        assert {t for t in support.ideal if support.weights[t] > 0} <= support.may, row
        assert drawn_tokens <= support.may, (drawn_tokens, support, row)


# values where the filters bite and the probability is spread over several tokens
moderate = dict(
    logit=st.one_of(st.floats(-3, 3, width=32), st.just(-INF)),
    temperature=st.floats(0.3, 3),
    top_p=st.one_of(st.just(1.0), st.floats(0.2, 1)),
    min_p=st.one_of(st.just(0.0), st.floats(0, 0.9)),
    repetition=st.one_of(st.just(1.0), st.floats(0.5, 2)),
    penalty=st.one_of(st.just(0.0), st.floats(-1, 1)),
    bias=st.floats(-2, 2),
    min_tokens=st.integers(0, 1),
    seed=st.none(),
)


@settings(max_examples=80, **SETTINGS)
@given(batches(max_vocab=6, **moderate))
def test_the_filters_keep_exactly_what_the_reference_allows(drawn):
    batch, dtype = drawn
    copies = [row for row in batch for _ in range(4 * COPIES)]
    (tokens,) = run_sampler(copies, dtype)
    for i, row in enumerate(batch):
        drawn_tokens = set(tokens[i * 4 * COPIES:(i + 1) * 4 * COPIES])
        support = reference_support(row)
        assert drawn_tokens <= support.may, (drawn_tokens, support, row)


@settings(max_examples=60, **SETTINGS)
@given(batches(max_rows=4), st.integers(0, 3), st.integers(0, 2**63 - 1))
def test_a_seeded_row_draws_the_same_tokens_alone_and_in_any_batch(drawn, position, seed):
    batch, dtype = drawn
    row, others = _copy(batch[0], seed=seed), batch[1:]
    position = min(position, len(others))
    mixed = others[:position] + [row] + others[position:]
    alone = [step[0] for step in run_sampler([row], dtype, steps=3)]
    torch.manual_seed(seed % 1000 + 1)  # unseeded rows draw something else this time
    inside = [step[position] for step in run_sampler(mixed, dtype, steps=3)]
    assert alone == inside
    assert alone == [step[0] for step in run_sampler([row], dtype, steps=3)]


NUM_DRAWS = 3000


@settings(max_examples=40, **SETTINGS)
@given(batches(max_vocab=6, max_rows=1, **moderate))
def test_draws_follow_the_reference_distribution(drawn):
    (row,), dtype = drawn
    support = reference_support(row)
    assume(support.ambiguous_mass() < 1e-3)  # a float32 sampler's kept set is exact here
    assume(sum(p > 0.05 for p in support.probs.values()) >= 2)
    torch.manual_seed(0)
    (tokens,) = run_sampler([row] * NUM_DRAWS, dtype)
    counts = torch.bincount(torch.tensor(tokens), minlength=len(row.raw)).double()  # (V,)
    empirical = (counts / NUM_DRAWS).tolist()
    expected = [support.probs.get(i, 0.0) for i in range(len(row.raw))]
    total_variation = sum(abs(a - b) for a, b in zip(empirical, expected)) / 2
    # the expected total variation of 3000 draws over <= 6 tokens is below 0.02
    assert total_variation < 0.05, (empirical, expected, row)


EXTREMES = dict(
    temperature=[1e-5, 1.0 + 1e-15, 3.0, 1e38, 1e308],
    top_p=[5e-324, 1e-45, 1e-38, 1.0],
    min_p=[0.0, 5e-324, 1e-45, 1.0],
    repetition_penalty=[5e-324, 1e-45, 1.0, 3e38, 1e308],
    presence_penalty=[-2.0, 2.0],
    frequency_penalty=[-2.0, 2.0],
    top_k=[-1, 1],
)


@settings(max_examples=40, **SETTINGS)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in EXTREMES.items()}),
       st.sampled_from([torch.float32, torch.bfloat16]), st.integers(0, 2**32))
def test_extreme_values_on_a_real_sized_row_stay_in_the_vocabulary(values, dtype, seed):
    vocab = 4096
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, vocab, generator=generator) * 20  # (B, V)
    logits[0, :7] = torch.tensor([INF, -INF, 3e38, -3e38, INF, 1e-45, -0.0])
    logits[1] = -INF
    only = 10 + seed % (vocab - 10)  # clear of the tokens the parameters touch
    logits[1, only] = -3e38  # one token left
    logits[2] = -INF  # nothing left: the raw argmax (token 0)
    params = SamplingParams(**values, logit_bias={0: -100.0, 3: 100.0}, min_tokens=3,
                            stop_token_ids=[4], seed=seed)
    prompt, output = [0, 2, 3, 5, only], [4, 5]
    batch = [Row(row.tolist(), params, prompt, output, 0) for row in logits]
    (tokens,) = run_sampler(batch, dtype)
    assert all(0 <= t < vocab for t in tokens)
    assert tokens[1] == only and tokens[2] == 0
    for i in (0, 3):
        raw = logits[i].to(dtype).float().tolist()
        assert reference_logits(Row(raw, params, prompt, output, 0))[tokens[i]] > -INF


# ---------------------------------------------------------------- fixed cases

REQUEST_TOKEN = 15  # the prompt "0"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prompt_logit", [2.0, -2.0])
def test_issue_13_request_samples_inside_the_vocabulary(build_metadata, dtype, prompt_logit):
    vocab = 49152
    params = SamplingParams(max_tokens=1, temperature=3, top_k=1, top_p=5e-324,
                            repetition_penalty=5e-324, seed=0)
    logits = torch.randn(1, vocab)  # (B, V)
    logits[0, REQUEST_TOKEN] = prompt_logit
    metadata = build_metadata([params], vocab, prompts=[[REQUEST_TOKEN]])
    token = Sampler()(logits.to(dtype), metadata).sampled_token_ids.item()
    # 2 / 5e-324 is +inf, the top token; -2 * 5e-324 is -0, so the argmax of the rest wins
    penalised = logits.to(dtype).float()
    penalised[0, REQUEST_TOKEN] = INF if prompt_logit > 0 else 0.0
    assert token == int(penalised.argmax())


def test_tied_infinite_logits_are_drawn_uniformly(build_metadata):
    logits = torch.tensor([[INF, 0.0, INF, 5.0, -INF]]).expand(4000, 5).clone()  # (B, V)
    out = Sampler()(logits, build_metadata([SamplingParams()] * 4000, 5))
    counts = torch.bincount(out.sampled_token_ids, minlength=5).tolist()
    assert counts[1] == counts[3] == counts[4] == 0
    assert abs(counts[0] - 2000) < 200


def test_blocking_an_infinite_logit_leaves_the_others(build_metadata):
    logits = torch.tensor([[INF, 1.0, 2.0]] * 2)  # (B, V)
    params = [SamplingParams(temperature=0.0, min_tokens=1), SamplingParams(min_tokens=1)]
    out = Sampler()(logits, build_metadata(params, 3, eos=0))
    assert out.sampled_token_ids[0] == 2
    assert out.sampled_token_ids[1] in (1, 2)


def test_rows_with_nothing_left_fall_back_to_the_raw_argmax(build_metadata):
    logits = torch.tensor([[1.0, 3.0, 2.0], [-INF, -INF, -INF]])  # (B, V)
    params = [SamplingParams(min_tokens=1, stop_token_ids=[0, 2], logit_bias={1: -100.0},
                             repetition_penalty=1e308, seed=1),
              SamplingParams(temperature=0.0)]
    metadata = build_metadata(params, 3, prompts=[[1], []], eos=1)
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [1, 0]


def test_huge_logits_keep_their_order_under_any_temperature(build_metadata):
    logits = torch.tensor([[1e38, 2e38, -3e38, 3e38]] * 3)  # (B, V)
    params = [SamplingParams(temperature=t, top_k=1) for t in (1e-5, 1.0, 1e38)]
    out = Sampler()(logits, build_metadata(params, 4))
    assert out.sampled_token_ids.tolist() == [3, 3, 3]
