"""One simulated engine instance: our scheduler's policy, step by step.

Each step: running requests first (their next prefill chunk or one decode token), then
waiting ones in FCFS order while the token budget lasts and fewer than max_num_seqs run.
A step that completes a request's known tokens samples one token for it. KV capacity is
taken to be ample: no preemption.
"""
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vllm.planner.cost_model import StepLoad, prefill_pairs


class Role(enum.Enum):
    COLOCATED = "colocated"
    PREFILL = "prefill"  # answers with one token; its KV goes to a decode instance
    DECODE = "decode"  # receives the prompt's KV, computes the last prompt token, decodes


@dataclass
class SimRequest:
    """A request's life across instances; times in seconds from the start of the run."""
    index: int
    prompt_len: int
    output_len: int
    ready_s: float  # when the client wants to send it
    sent_s: float = -1.0  # when it was sent (later than ready under a concurrency cap)
    token_times: list[float] = field(default_factory=list)
    done_s: float = -1.0


@dataclass
class SeqState:
    """A request as one instance sees it."""
    request: SimRequest
    num_computed: int
    num_tokens: int
    max_new_tokens: int
    num_generated: int = 0

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.request.prompt_len


def seq_state_for(request: SimRequest, role: Role) -> SeqState:
    if role == Role.DECODE:  # the KV of all but the last prompt token arrived
        return SeqState(request, request.prompt_len - 1, request.prompt_len, request.output_len)
    max_new = 1 if role == Role.PREFILL else request.output_len
    return SeqState(request, 0, request.prompt_len, max_new)


Batch = list[tuple[SeqState, int]]


class SimInstance:

    def __init__(self, name: str, role: Role, step_seconds: Callable[[StepLoad], float],
                 max_num_seqs: int, max_num_batched_tokens: int):
        self.name = name
        self.role = role
        self.step_seconds = step_seconds
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self.busy = False
        self.start_pending = False
        self.in_flight = 0  # requests the router sent here and not yet done here

    def enqueue(self, sequence: SeqState, front: bool = False) -> None:
        if front:
            self.waiting.appendleft(sequence)
        else:
            self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        budget, batch = self.max_num_batched_tokens, []
        for sequence in self.running:
            if budget == 0:
                break
            num_new = min(sequence.num_tokens - sequence.num_computed, budget)
            if num_new > 0:
                batch.append((sequence, num_new))
                budget -= num_new
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            sequence = self.waiting.popleft()
            num_new = min(sequence.num_tokens - sequence.num_computed, budget)
            self.running.append(sequence)
            batch.append((sequence, num_new))
            budget -= num_new
        return batch

    def finish_step(self, batch: Batch, now: float) -> list[SeqState]:
        """Apply a step that ended at `now`; returns the sequences it finished."""
        finished = []
        for sequence, num_new in batch:
            sequence.num_computed += num_new
            if sequence.num_computed < sequence.num_tokens:
                continue
            sequence.num_generated += 1
            sequence.num_tokens += 1
            if self.role != Role.PREFILL:
                sequence.request.token_times.append(now)
            if sequence.num_generated == sequence.max_new_tokens:
                self.running.remove(sequence)
                finished.append(sequence)
        return finished


def step_load(batch: Batch) -> StepLoad:
    prefill_tokens, pairs, decode_seqs, context = 0, 0.0, 0, 0
    for sequence, num_new in batch:
        if sequence.in_prefill:
            prefill_tokens += num_new
            pairs += prefill_pairs(sequence.num_computed, num_new)
        else:
            decode_seqs += 1
            context += sequence.num_computed + 1
    return StepLoad(prefill_tokens, pairs, decode_seqs, context)
