import torch

from vllm.sample import Sampler, SamplingMetadata
from vllm.sampling_params import SamplingParams

VOCAB = 64
NUM_STEPS = 6


def _requests():
    """name -> (params, fixed logits row); the logits are flat so draws vary a lot."""
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1)) * 0.3
    return {
        "seeded_a": (SamplingParams(seed=123), logits[0]),
        "seeded_b": (SamplingParams(seed=7, top_k=20), logits[1]),
        "plain": (SamplingParams(temperature=0.8), logits[2]),
        "greedy": (SamplingParams(temperature=0.0), logits[3]),
    }


def _run(names, global_seed, requests=None):
    """Sample NUM_STEPS steps for a batch in the order of names; tokens per name.

    Each step's metadata is built from the tokens sampled so far, as the engine does, so a
    row's position advances from step to step.
    """
    requests = requests or _requests()
    torch.manual_seed(global_seed)
    params = [requests[name][0] for name in names]
    logits = torch.stack([requests[name][1] for name in names])  # (B, V)
    outputs = [[] for _ in names]
    for _ in range(NUM_STEPS):
        metadata = SamplingMetadata.build(params, [[] for _ in names], outputs, VOCAB, ())
        tokens = Sampler()(logits, metadata).sampled_token_ids.tolist()
        outputs = [output + [token] for output, token in zip(outputs, tokens)]
    return dict(zip(names, outputs))


def test_seeded_row_ignores_batch_composition_and_order():
    alone = _run(["seeded_a"], global_seed=0)["seeded_a"]
    batches = [
        ["plain", "seeded_a"],
        ["seeded_b", "greedy", "plain", "seeded_a"],
        ["seeded_a", "seeded_b"],
        ["greedy", "seeded_a", "plain"],
    ]
    for global_seed, names in enumerate(batches, start=1):
        assert _run(names, global_seed)["seeded_a"] == alone, names
    assert len(set(alone)) > 1  # each position draws afresh


def test_two_seeded_rows_keep_their_tokens_when_swapped():
    first = _run(["seeded_a", "seeded_b", "plain"], global_seed=3)
    swapped = _run(["plain", "seeded_b", "seeded_a"], global_seed=4)
    assert first["seeded_a"] == swapped["seeded_a"]
    assert first["seeded_b"] == swapped["seeded_b"]


def test_different_seeds_give_different_tokens():
    requests = _requests()
    logits = requests["seeded_a"][1]
    requests["other_seed"] = (SamplingParams(seed=124), logits)
    tokens = _run(["seeded_a", "other_seed"], global_seed=0, requests=requests)
    assert tokens["seeded_a"] != tokens["other_seed"]


def test_unseeded_rows_follow_the_global_rng():
    first = _run(["plain", "seeded_a"], global_seed=5)["plain"]
    again = _run(["plain", "seeded_a"], global_seed=5)["plain"]
    other = _run(["plain", "seeded_a"], global_seed=6)["plain"]
    assert first == again
    assert first != other
