"""Discrete-event simulation of a deployment serving a workload.

Instances run the busy loop of our engine: whenever an instance is idle and has work it
starts a step, whose duration the cost model gives; tokens come out when the step ends.
The client is benchmark_serving: requests become ready at the workload's arrival times
and, under --max-concurrency, wait for a free slot (TTFT counts from the send, as there).
Disaggregated requests go through a router that picks the prefill and the decode
instance with the fewest requests in flight (the proxy's rule), are prefilled, wait for
their KV transfer, then join the decode instance's queue at the front.
"""
import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from vllm.planner.instance_cost import TransferCost
from vllm.planner.cost_model import StepLoad
from vllm.planner.sim_instance import (Role, SeqState, SimInstance, SimRequest, seq_state_for,
                                       step_load)
from vllm.planner.workload import Workload


@dataclass(frozen=True)
class InstanceSpec:
    """An engine instance: its step time and its scheduler limits."""
    step_seconds: Callable[[StepLoad], float]
    max_num_seqs: int
    max_num_batched_tokens: int


@dataclass(frozen=True)
class Deployment:
    """Instances to simulate: colocated ones, or prefill and decode ones plus the transfer."""
    colocated: tuple[InstanceSpec, ...] = ()
    prefill: tuple[InstanceSpec, ...] = ()
    decode: tuple[InstanceSpec, ...] = ()
    transfer: Optional[TransferCost] = None

    def __post_init__(self):
        disaggregated = bool(self.prefill or self.decode)
        if disaggregated == bool(self.colocated):
            raise ValueError("a deployment is either colocated or prefill + decode instances")
        if disaggregated and not (self.prefill and self.decode and self.transfer):
            raise ValueError("a disaggregated deployment needs prefill and decode instances "
                             "and a transfer cost")


@dataclass
class SimOutcome:
    requests: list[SimRequest]
    duration_s: float


class _Clock:

    def __init__(self):
        self.now = 0.0
        self._events: list = []
        self._order = itertools.count()

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (time_s, next(self._order), action))

    def run(self) -> None:
        while self._events:
            self.now, _, action = heapq.heappop(self._events)
            action()


class _ClusterSim:

    def __init__(self, deployment: Deployment, workload: Workload):
        self.colocated = _instances("colocated", Role.COLOCATED, deployment.colocated)
        self.prefill = _instances("prefill", Role.PREFILL, deployment.prefill)
        self.decode = _instances("decode", Role.DECODE, deployment.decode)
        self.transfer = deployment.transfer
        self.decoder_of: dict[int, SimInstance] = {}
        self.clock = _Clock()
        self.max_concurrency = workload.max_concurrency
        self.active = 0
        self.pending: deque[SimRequest] = deque()
        self.requests = [SimRequest(index, workload.input_len, workload.output_len, float(t))
                         for index, t in enumerate(workload.arrival_times())]

    def run(self) -> SimOutcome:
        for request in self.requests:
            self.clock.at(request.ready_s, lambda r=request: self._ready(r))
        self.clock.run()
        unfinished = [r.index for r in self.requests if r.done_s < 0]
        if unfinished:
            raise RuntimeError(f"simulation ended with {len(unfinished)} unfinished requests")
        return SimOutcome(self.requests, max(r.done_s for r in self.requests))

    def _ready(self, request: SimRequest) -> None:
        if self.max_concurrency is not None and self.active >= self.max_concurrency:
            self.pending.append(request)
        else:
            self._send(request)

    def _send(self, request: SimRequest) -> None:
        request.sent_s = self.clock.now
        self.active += 1
        if self.colocated:
            self._submit(_least_loaded(self.colocated), request, Role.COLOCATED)
            return
        decoder = _least_loaded(self.decode)
        decoder.in_flight += 1  # the proxy sends to both at once
        self.decoder_of[request.index] = decoder
        self._submit(_least_loaded(self.prefill), request, Role.PREFILL)

    def _submit(self, instance: SimInstance, request: SimRequest, role: Role,
                front: bool = False) -> None:
        if role != Role.DECODE:
            instance.in_flight += 1
        instance.enqueue(seq_state_for(request, role), front)
        self._kick(instance)

    def _kick(self, instance: SimInstance) -> None:
        """Start a step once every event of this instant is in (the engine drains its
        input before it schedules), so requests arriving together share a step."""
        if not (instance.busy or instance.start_pending):
            instance.start_pending = True
            self.clock.at(self.clock.now, lambda: self._start_step(instance))

    def _start_step(self, instance: SimInstance) -> None:
        instance.start_pending = False
        if instance.busy or not instance.has_work():
            return
        batch = instance.schedule()
        instance.busy = True
        seconds = instance.step_seconds(step_load(batch))
        self.clock.at(self.clock.now + seconds, lambda: self._step_done(instance, batch))

    def _step_done(self, instance: SimInstance, batch) -> None:
        instance.busy = False
        for state in instance.finish_step(batch, self.clock.now):
            instance.in_flight -= 1
            if instance.role == Role.PREFILL:
                self._start_transfer(state)
            else:
                self._request_done(state.request)
        self._kick(instance)

    def _start_transfer(self, state: SeqState) -> None:
        request = state.request
        arrival = self.clock.now + self.transfer.seconds(request.prompt_len)
        decoder = self.decoder_of.pop(request.index)
        self.clock.at(arrival, lambda: self._submit(decoder, request, Role.DECODE, front=True))

    def _request_done(self, request: SimRequest) -> None:
        request.done_s = self.clock.now
        self.active -= 1
        if self.pending:
            self._send(self.pending.popleft())


def _least_loaded(instances: list[SimInstance]) -> SimInstance:
    return min(instances, key=lambda instance: instance.in_flight)


def _instances(kind: str, role: Role, specs: tuple[InstanceSpec, ...]) -> list[SimInstance]:
    return [SimInstance(f"{kind}{index}", role, spec.step_seconds, spec.max_num_seqs,
                        spec.max_num_batched_tokens) for index, spec in enumerate(specs)]


def simulate(deployment: Deployment, workload: Workload) -> SimOutcome:
    """Serve the workload on freshly started (empty) instances of the deployment."""
    return _ClusterSim(deployment, workload).run()
