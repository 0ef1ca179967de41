"""What crosses from the engine core to the workers, and what comes back."""
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    output_token_ids: list[int] = field(default_factory=list)


@dataclass
class CachedRequestData:
    req_id: str
    resumed_from_preemption: bool
    new_block_ids: list[int]
    num_computed_tokens: int
    # Tokens the worker has not seen (set only for a request resumed after preemption).
    resumed_token_ids: Optional[list[int]] = None


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str]
    kv_connector_metadata: Any = None

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    # One list per request; empty for a prefill chunk that does not sample yet.
    sampled_token_ids: list[list[int]]
    # Per request: (token_ids, logprobs, sampled_rank) with the sampled token first, or None.
    logprobs: Optional[list[Optional[tuple[list[int], list[float], int]]]] = None


EMPTY_MODEL_RUNNER_OUTPUT = ModelRunnerOutput(req_ids=[], sampled_token_ids=[])
