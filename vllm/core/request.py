"""A request as the engine core tracks it."""
import enum
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from vllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from vllm.core.messages import EngineCoreRequest


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    WAITING_FOR_REMOTE_KVS = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Everything after this point is finished.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()
    FINISHED_IGNORED = enum.auto()

    @staticmethod
    def is_finished(status: "RequestStatus") -> bool:
        return status > RequestStatus.PREEMPTED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_IGNORED: "length",
}


class Request:

    def __init__(self, request_id: str, prompt_token_ids: list[int],
                 sampling_params: SamplingParams,
                 eos_token_ids: Union[int, Sequence[int], None],
                 arrival_time: Optional[float] = None,
                 kv_transfer_params: Optional[dict[str, Any]] = None):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.eos_token_ids = _as_tuple(eos_token_ids)
        self.arrival_time = arrival_time if arrival_time is not None else time.time()
        self.kv_transfer_params = kv_transfer_params
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hits at first scheduling
        self.num_preemptions = 0
        self.block_hashes: list[int] = []

    @classmethod
    def from_engine_request(cls, message: "EngineCoreRequest",
                            eos_token_ids: Sequence[int]) -> "Request":
        """The engine core's one Request of a front end's message; eos ids are the model's."""
        return cls(message.request_id, message.prompt_token_ids, message.sampling_params,
                   eos_token_ids, message.arrival_time, message.kv_transfer_params)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens

    def append_output_token_ids(self, token_ids: list[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def get_finished_reason(self) -> Optional[str]:
        return FINISH_REASONS.get(self.status)


def _as_tuple(eos_token_ids: Union[int, Sequence[int], None]) -> tuple[int, ...]:
    if eos_token_ids is None:
        return ()
    if isinstance(eos_token_ids, int):
        return (eos_token_ids,)
    return tuple(eos_token_ids)
