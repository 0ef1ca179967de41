"""Token-budget scheduler with no phases: chunked prefill, decode and prefix hits alike."""
import enum
from collections import deque
from typing import Iterable, NamedTuple

from vllm.config import VllmConfig
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.messages import EngineCoreOutput
from vllm.core.request import Request, RequestStatus
from vllm.core.sched_output import (CachedRequestData, ModelRunnerOutput, NewRequestData,
                                    SchedulerOutput)
from vllm.core.stop import check_stop
from vllm.kv_transfer_params import computed_locally
from vllm.logger import init_logger

logger = init_logger(__name__)


class _Remote(enum.Enum):
    LOCAL = enum.auto()  # compute the prompt here
    PARKED = enum.auto()  # blocks reserved, waiting for remote KV
    NO_ROOM = enum.auto()  # remote KV wanted, but its blocks do not fit yet


class _Allocation(NamedTuple):
    blocks: list
    preempted: bool


class Scheduler:

    def __init__(self, vllm_config: VllmConfig, kv_cache_manager: KVCacheManager,
                 connector=None):
        sched = vllm_config.scheduler_config
        self.max_num_seqs = sched.max_num_seqs
        self.max_num_batched_tokens = sched.max_num_batched_tokens
        self.max_model_len = sched.max_model_len
        self.enable_chunked_prefill = sched.enable_chunked_prefill
        self.kv_cache_manager = kv_cache_manager
        self.connector = connector
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self._seen_by_workers: set[str] = set()
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # tokens looked up in the prefix cache, since start
        self.prefix_cache_hits = 0  # of those, tokens found there
        # KV transfer: consumers waiting for remote KV (no batch slot), producers' finished
        # requests whose blocks stay until the consumer has them.
        self.waiting_for_remote: dict[str, Request] = {}
        self.held: dict[str, Request] = {}
        self.kv_load_failure_policy = "recompute"
        if connector is not None:
            connector.bind_block_lookup(kv_cache_manager.get_block_ids)
            self.kv_load_failure_policy = vllm_config.kv_transfer_config.kv_load_failure_policy
        self.failed: dict[str, str] = {}  # request id -> why it failed (reported once)
        self._pending_outputs: list[EngineCoreOutput] = []

    # ---- requests in and out -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> None:
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished():
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            elif request.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                del self.waiting_for_remote[request_id]
            else:
                self.waiting.remove(request)
            request.status = status
            self._free_request(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.waiting_for_remote)

    def has_work(self) -> bool:
        """Something to schedule, to report, or to tell the workers."""
        connector_busy = self.connector is not None and self.connector.has_pending_work()
        return bool(self.waiting or self.running or self._pending_outputs or connector_busy)

    def take_pending_outputs(self) -> list[EngineCoreOutput]:
        outputs, self._pending_outputs = self._pending_outputs, []
        return outputs

    # ---- KV connector events -------------------------------------------------------------
    def poll_connector(self) -> None:
        if self.connector is None:
            return
        events = self.connector.poll()
        for request_id in events.loaded:
            self._remote_kv_loaded(request_id)
        for request_id, reason in events.failed:
            self._remote_kv_failed(request_id, reason)
        for request_id in events.release:
            request = self.held.pop(request_id, None)
            if request is not None:
                self.kv_cache_manager.free(request)
        self._abort_with_output(events.abort)

    def _remote_kv_loaded(self, request_id: str) -> None:
        request = self.waiting_for_remote.pop(request_id, None)
        if request is None:
            return
        request.num_computed_tokens = request.num_prompt_tokens - 1
        request.num_cached_tokens = request.num_computed_tokens
        # Done with the producer: if preempted later, recompute here like any request.
        request.kv_transfer_params = computed_locally(request.kv_transfer_params)
        self.kv_cache_manager.cache_computed_blocks(request, request.num_computed_tokens)
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)

    def _remote_kv_failed(self, request_id: str, reason: str) -> None:
        request = self.waiting_for_remote.pop(request_id, None)
        if request is None:
            return
        if self.kv_load_failure_policy == "fail":
            self.failed[request_id] = f"KV transfer failed: {reason}"
            request.status = RequestStatus.FINISHED_ABORTED
            self._free_request(request)
            self._pending_outputs.append(EngineCoreOutput(request_id, [], finish_reason="abort"))
            return
        logger.info("request %s: %s; recomputing its prompt locally", request_id, reason)
        self.kv_cache_manager.free(request)
        request.kv_transfer_params = computed_locally(request.kv_transfer_params)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)

    def _abort_with_output(self, request_ids: list[str]) -> None:
        live = [r for r in request_ids if r in self.requests]
        self.finish_requests(live, RequestStatus.FINISHED_ABORTED)
        self._pending_outputs.extend(EngineCoreOutput(r, [], finish_reason="abort")
                                     for r in live)

    # ---- one step ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Callers poll the connector first (EngineCore.step does)."""
        budget = self.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        preempted = False

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = self._num_tokens_to_schedule(request, budget)
            if num_new == 0:
                index += 1
                continue
            allocation = self._allocate_or_preempt(request, num_new)
            if allocation is None:
                preempted = True
                break
            preempted = preempted or allocation.preempted
            num_scheduled[request.request_id] = num_new
            budget -= num_new
            cached_reqs.append(self._cached_data(request, allocation.blocks))
            index += 1

        if not preempted:
            budget = self._schedule_waiting(budget, num_scheduled, new_reqs, cached_reqs)

        output = SchedulerOutput(
            scheduled_new_reqs=new_reqs, scheduled_cached_reqs=cached_reqs,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            finished_req_ids=self.finished_req_ids)
        if self.connector is not None:
            output.kv_connector_metadata = self.connector.build_connector_meta(output)
        self.finished_req_ids = set()
        for request_id, count in num_scheduled.items():
            self.requests[request_id].num_computed_tokens += count
        return output

    def _num_tokens_to_schedule(self, request: Request, budget: int) -> int:
        num_new = request.num_tokens - request.num_computed_tokens
        num_new = min(num_new, budget, self.max_model_len - request.num_computed_tokens)
        return max(num_new, 0)

    def _allocate_or_preempt(self, request: Request, num_new: int):
        """Allocate for a running request, preempting the newest others until it fits."""
        preempted_any = False
        while True:
            new_blocks = self.kv_cache_manager.allocate_slots(request, num_new)
            if new_blocks is not None:
                return _Allocation(new_blocks, preempted_any)
            victim = self.running.pop()
            self._preempt(victim)
            preempted_any = True
            if victim is request:
                return None

    def _preempt(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _schedule_waiting(self, budget, num_scheduled, new_reqs, cached_reqs) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            looked_up = request.num_computed_tokens == 0
            if not looked_up:  # its KV arrived from a remote prefill
                computed_blocks, num_hit_tokens = [], request.num_computed_tokens
            else:
                computed_blocks, num_hit_tokens = self.kv_cache_manager.get_computed_blocks(
                    request)
                remote = self._wait_for_remote_kv(request, computed_blocks, num_hit_tokens)
                if remote == _Remote.PARKED:
                    continue
                if remote == _Remote.NO_ROOM:
                    break
            num_new = request.num_tokens - num_hit_tokens
            if not self.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            new_blocks = self.kv_cache_manager.allocate_slots(request, num_new, computed_blocks)
            if new_blocks is None:
                break
            self.waiting.popleft()
            if looked_up:
                self._count_prefix_lookup(request, num_hit_tokens)
            resumed = request.status == RequestStatus.PREEMPTED
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            self.running.append(request)
            num_scheduled[request.request_id] = num_new
            budget -= num_new
            block_ids = self.kv_cache_manager.get_block_ids(request.request_id)
            if resumed and request.request_id in self._seen_by_workers:
                cached_reqs.append(CachedRequestData(
                    request.request_id, True, block_ids, num_hit_tokens,
                    resumed_token_ids=list(request.output_token_ids)))
            else:
                self._seen_by_workers.add(request.request_id)
                new_reqs.append(NewRequestData(
                    request.request_id, request.prompt_token_ids, request.sampling_params,
                    block_ids, num_hit_tokens, list(request.output_token_ids)))
        return budget

    def _wait_for_remote_kv(self, request: Request, computed_blocks, num_hit_tokens: int
                            ) -> "_Remote":
        """Reserve the prompt's blocks and park the request until its KV arrives."""
        if self.connector is None:
            return _Remote.LOCAL
        num_external, is_async = self.connector.get_num_new_matched_tokens(request,
                                                                           num_hit_tokens)
        if num_external == 0 or not is_async:
            return _Remote.LOCAL
        num_new = request.num_tokens - num_hit_tokens
        blocks = self.kv_cache_manager.allocate_slots(request, num_new, computed_blocks,
                                                      cache=False)
        if blocks is None:
            return _Remote.NO_ROOM
        self.waiting.popleft()
        self._count_prefix_lookup(request, num_hit_tokens)
        request.status = RequestStatus.WAITING_FOR_REMOTE_KVS
        self.waiting_for_remote[request.request_id] = request
        self.connector.update_state_after_alloc(
            request, self.kv_cache_manager.get_block_ids(request.request_id), num_external)
        return _Remote.PARKED

    def _count_prefix_lookup(self, request: Request, num_hit_tokens: int) -> None:
        """Once per admission (a lookup retried while blocks are short counts once)."""
        if self.kv_cache_manager.enable_caching:
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_hit_tokens

    def _cached_data(self, request: Request, new_blocks) -> CachedRequestData:
        return CachedRequestData(request.request_id, False,
                                 [block.block_id for block in new_blocks],
                                 request.num_computed_tokens)

    # ---- after the model ran -------------------------------------------------------------
    def update_from_output(self, scheduler_output: SchedulerOutput,
                           runner_output: ModelRunnerOutput) -> list[EngineCoreOutput]:
        outputs = []
        logprobs = runner_output.logprobs
        for index, request_id in enumerate(runner_output.req_ids):
            request = self.requests.get(request_id)
            token_ids = runner_output.sampled_token_ids[index]
            if request is None or request.is_finished() or not token_ids:
                continue
            request.append_output_token_ids(token_ids)
            stopped = check_stop(request, self.max_model_len)
            kv_transfer_params = None
            if stopped:
                self.running.remove(request)
                kv_transfer_params = self._free_request(request)
            outputs.append(EngineCoreOutput(
                request_id=request_id, new_token_ids=token_ids,
                new_logprobs=[logprobs[index]] if logprobs and logprobs[index] else None,
                finish_reason=request.get_finished_reason() if stopped else None,
                stop_reason=request.stop_reason,
                num_cached_tokens=max(request.num_cached_tokens, 0),
                kv_transfer_params=kv_transfer_params))
        return outputs

    def _free_request(self, request: Request):
        """Forget a finished request; its blocks stay held while a consumer needs them.
        Returns the kv_transfer_params for its response."""
        delay_free, kv_transfer_params = False, None
        if self.connector is not None:
            delay_free, kv_transfer_params = self.connector.request_finished(
                request, self.kv_cache_manager.get_block_ids(request.request_id))
        if delay_free:
            self.held[request.request_id] = request
        else:
            self.kv_cache_manager.free(request)
        self.finished_req_ids.add(request.request_id)
        self._seen_by_workers.discard(request.request_id)
        del self.requests[request.request_id]
        return kv_transfer_params

