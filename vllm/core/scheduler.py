"""Token-budget scheduler with no phases: chunked prefill, decode and prefix hits alike."""
from collections import deque
from typing import Iterable, NamedTuple

from vllm.config import VllmConfig
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.outputs import EngineCoreOutput
from vllm.core.request import Request, RequestStatus
from vllm.core.sched_output import (CachedRequestData, ModelRunnerOutput, NewRequestData,
                                    SchedulerOutput)
from vllm.core.stop import check_stop


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
            else:
                self.waiting.remove(request)
            request.status = status
            self._free_request(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- one step ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
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
            computed_blocks, num_hit_tokens = self.kv_cache_manager.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit_tokens
            if not self.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            new_blocks = self.kv_cache_manager.allocate_slots(request, num_new, computed_blocks)
            if new_blocks is None:
                break
            self.waiting.popleft()
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
            if stopped:
                self.running.remove(request)
                self._free_request(request)
            outputs.append(EngineCoreOutput(
                request_id=request_id, new_token_ids=token_ids,
                new_logprobs=[logprobs[index]] if logprobs and logprobs[index] else None,
                finish_reason=request.get_finished_reason() if stopped else None,
                stop_reason=request.stop_reason,
                num_cached_tokens=max(request.num_cached_tokens, 0)))
        return outputs

    def _free_request(self, request: Request) -> None:
        if self.connector is not None:
            self.connector.request_finished(request, self.kv_cache_manager.get_block_ids(
                request.request_id))
        self.kv_cache_manager.free(request)
        self.finished_req_ids.add(request.request_id)
        self._seen_by_workers.discard(request.request_id)
        del self.requests[request.request_id]

