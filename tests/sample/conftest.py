import pytest
import torch

from vllm.sample import SamplingMetadata


@pytest.fixture(autouse=True)
def fixed_global_seed():
    torch.manual_seed(0)


@pytest.fixture
def build_metadata():
    """Build SamplingMetadata with empty token histories unless given."""

    def build(params, vocab_size, prompts=None, outputs=None, eos=()):
        """`eos`: one eos id or a sequence of them."""
        prompts = prompts if prompts is not None else [[] for _ in params]
        outputs = outputs if outputs is not None else [[] for _ in params]
        eos_ids = (eos,) if isinstance(eos, int) else tuple(eos)
        return SamplingMetadata.build(params, prompts, outputs, vocab_size, eos_ids)

    return build
