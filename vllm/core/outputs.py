"""Per-request results the engine core emits after each step."""
from typing import Any, Optional

import msgspec


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True):
    request_id: str
    new_token_ids: list[int]
    # Per new token: (token_ids, logprobs, sampled_rank), sampled token first.
    new_logprobs: Optional[list[tuple[list[int], list[float], int]]] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[int | str] = None
    num_cached_tokens: int = 0
    kv_transfer_params: Optional[dict[str, Any]] = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class SchedulerStats(msgspec.Struct, omit_defaults=True):
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    num_preemptions: int = 0
