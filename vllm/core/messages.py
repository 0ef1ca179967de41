"""What crosses the boundary between a front end and an engine core, as msgspec structs.

Every ZMQ message is two frames: a one-byte tag, then a msgspec-msgpack payload.
An engine core may serve several front ends (`--api-server-count`): it pulls from all of
them and sends each one the outputs of its own requests (`client_index`) and the stats.

  front end -> engine core (PUSH -> PULL, "input")
    ADD       EngineCoreRequest     built once by the front end's Processor
    ABORT     list[str]             request ids
    STATS     (empty)               publish SchedulerStats now
    SHUTDOWN  (empty)               leave the loop, free everything, exit 0
  engine core -> front end (PUSH -> PULL, "output")
    READY     EngineReady           once, after the model and KV cache are set up
    FAILED    EngineFailure         instead of READY when start-up fails, then exit
    OUTPUTS   EngineCoreOutputs     after every step (and after idle bookkeeping)
    DEAD      EngineFailure         the busy loop crashed, then exit

The offline LLMEngine hands the same EngineCoreRequest to its in-process EngineCore.
"""
from typing import Any, Optional

import msgspec

from vllm.sampling_params import SamplingParams


class MessageTag:
    ADD = b"A"
    ABORT = b"X"
    STATS = b"S"
    SHUTDOWN = b"Q"
    READY = b"R"
    FAILED = b"F"
    OUTPUTS = b"O"
    DEAD = b"D"


class EngineCoreRequest(msgspec.Struct, array_like=True, omit_defaults=True):
    """A validated, token-level request: prompt checked against the model, max_tokens
    filled in, one of the n children (seeded seed + i). The engine core's Request is
    built from it once (Request.from_engine_request)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    kv_transfer_params: Optional[dict[str, Any]] = None
    client_index: int = 0  # which front end (API server) the outputs go back to


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
    # Since start, in tokens: looked up in the prefix cache, and found there.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


class EngineCoreOutputs(msgspec.Struct, array_like=True, omit_defaults=True):
    outputs: list[EngineCoreOutput] = []
    scheduler_stats: Optional[SchedulerStats] = None
    # request id -> why the engine core refused it (it never ran).
    rejected: dict[str, str] = {}
    # request id -> why it failed after admission (its KV transfer failed).
    failed: dict[str, str] = {}
    # request id -> why the step computing it raised (the engine went on without it).
    errored: dict[str, str] = {}
    timestamp: float = 0.0
    engine_index: int = 0  # the data-parallel rank of the engine core that sent it


class EngineReady(msgspec.Struct):
    pid: int
    num_blocks: int
    block_size: int
    max_model_len: int


class EngineFailure(msgspec.Struct):
    message: str
    # True when the cause is the user's configuration (ValueError, missing file).
    is_config_error: bool = False
    traceback: str = ""
