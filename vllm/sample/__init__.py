"""Turning logits into tokens: batched sampling metadata and the sampler."""

from vllm.sample.logprobs import LogprobsTensors
from vllm.sample.metadata import SamplingMetadata
from vllm.sample.sampler import Sampler, SamplerOutput

__all__ = ["LogprobsTensors", "Sampler", "SamplerOutput", "SamplingMetadata"]
