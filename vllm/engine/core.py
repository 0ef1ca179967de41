"""The engine core: schedule() -> execute_model() -> update_from_output(), nothing else."""
import time

from vllm.config import VllmConfig
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.kv_events import KVEventBatch
from vllm.core.messages import EngineCoreOutput, EngineCoreRequest, SchedulerStats
from vllm.core.request import Request, RequestStatus
from vllm.core.scheduler import Scheduler
from vllm.engine.processor import check_request_fits_model
from vllm.logger import init_logger

logger = init_logger(__name__)


MAX_FAILED_STEPS_IN_A_ROW = 3  # then the engine itself is broken: fail it loudly


class EngineCore:

    def __init__(self, vllm_config: VllmConfig, executor_cls=None,
                 isolate_step_errors: bool = False):
        start = time.perf_counter()
        if executor_cls is None:
            from vllm.executor.factory import executor_class
            executor_cls = executor_class(vllm_config.parallel_config)
        self.vllm_config = vllm_config
        self.executor = executor_cls(vllm_config)
        cache_config = vllm_config.cache_config
        num_blocks = self.executor.determine_num_blocks()
        self._check_capacity(num_blocks)
        cache_config.num_blocks = num_blocks
        self.executor.initialize_kv_cache(num_blocks)
        events_config = vllm_config.kv_events_config
        publishes = events_config is not None and events_config.publishes
        if publishes and not cache_config.enable_prefix_caching:
            logger.warning("KV cache events are on but prefix caching is off: no block is "
                           "ever cached, so no event will be published")
        self.kv_cache_manager = KVCacheManager(num_blocks, cache_config.block_size,
                                               cache_config.enable_prefix_caching,
                                               record_events=publishes)
        from vllm.distributed.kv_transfer.factory import create_scheduler_connector
        self.connector = create_scheduler_connector(vllm_config)
        self.scheduler = Scheduler(vllm_config, self.kv_cache_manager, self.connector)
        # Serving asks for it; only an executor whose ranks share one process can give it.
        self.isolate_step_errors = isolate_step_errors and getattr(
            self.executor, "survives_step_errors", False)
        self._failed_steps_in_a_row = 0
        self.errored: dict[str, str] = {}  # request id -> why it failed inside the core
        from vllm.distributed.kv_events.publisher import create_publisher
        self.kv_event_publisher = create_publisher(
            events_config, vllm_config.parallel_config.data_parallel_rank)
        logger.info("engine core ready in %.1f s: %d KV blocks of %d tokens",
                    time.perf_counter() - start, num_blocks, cache_config.block_size)

    def _check_capacity(self, num_blocks: int) -> None:
        block_size = self.vllm_config.cache_config.block_size
        max_len = self.vllm_config.model_config.max_model_len
        if num_blocks < 1:
            raise ValueError("no memory is left for the KV cache; raise "
                             "VLLM_CPU_KVCACHE_SPACE or --gpu-memory-utilization")
        if num_blocks * block_size < max_len:
            raise ValueError(
                f"the KV cache holds {num_blocks * block_size} tokens, fewer than "
                f"max_model_len={max_len}: lower --max-model-len or give the cache more memory")

    @property
    def max_tokens_in_cache(self) -> int:
        return self.kv_cache_manager.num_blocks * self.kv_cache_manager.block_size

    def add_engine_request(self, message: EngineCoreRequest) -> None:
        """Admit a front end's request (ValueError if it cannot run here)."""
        eos_token_ids = self.vllm_config.model_config.eos_token_ids
        self.add_request(Request.from_engine_request(message, eos_token_ids))

    def add_request(self, request: Request) -> None:
        check_request_fits_model(request, self.vllm_config.model_config.vocab_size)
        if request.num_tokens > self.max_tokens_in_cache:
            raise ValueError(
                f"the prompt ({request.num_tokens} tokens) can never fit in the KV cache "
                f"({self.max_tokens_in_cache} tokens)")
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_stats(self) -> SchedulerStats:
        manager = self.kv_cache_manager
        return SchedulerStats(num_running=len(self.scheduler.running),
                              num_waiting=len(self.scheduler.waiting) +
                              len(self.scheduler.waiting_for_remote),
                              kv_cache_usage=manager.usage(),
                              num_free_blocks=manager.get_num_free_blocks(),
                              num_total_blocks=manager.num_blocks,
                              num_preemptions=self.scheduler.num_preemptions,
                              prefix_cache_queries=self.scheduler.prefix_cache_queries,
                              prefix_cache_hits=self.scheduler.prefix_cache_hits)

    def has_work(self) -> bool:
        """Anything for step() to do; False while requests only wait for remote KV."""
        return self.scheduler.has_work()

    def wake_sockets(self) -> list:
        return self.connector.wake_sockets() if self.connector is not None else []

    def take_failed(self) -> dict[str, str]:
        failed, self.scheduler.failed = self.scheduler.failed, {}
        return failed

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; False (nothing done) while any block is in use."""
        reset = self.kv_cache_manager.block_pool.reset_prefix_cache()
        self._publish_kv_events()
        return reset

    def _publish_kv_events(self) -> None:
        events = self.kv_cache_manager.take_events()
        if events and self.kv_event_publisher is not None:
            self.kv_event_publisher.publish(KVEventBatch(ts=time.time(), events=events))

    def step(self) -> list[EngineCoreOutput]:
        try:
            return self._step()
        finally:
            self._publish_kv_events()

    def _step(self) -> list[EngineCoreOutput]:
        self.scheduler.poll_connector()
        outputs = self.scheduler.take_pending_outputs()
        if not self.scheduler.has_work():
            return outputs
        scheduler_output = self.scheduler.schedule()
        try:
            runner_output = self.executor.execute_model(scheduler_output)
        except Exception as error:
            self._failed_steps_in_a_row += 1
            if (not self.isolate_step_errors
                    or self._failed_steps_in_a_row >= MAX_FAILED_STEPS_IN_A_ROW):
                raise
            logger.exception("a step failed; its requests fail, the engine goes on")
            return outputs + self._fail_step(scheduler_output, error)
        self._failed_steps_in_a_row = 0
        return outputs + self.scheduler.update_from_output(scheduler_output, runner_output)

    def _fail_step(self, scheduler_output, error: Exception) -> list[EngineCoreOutput]:
        # The step may have half written any block of its requests, shared ones too.
        reason = f"the engine step computing this request failed: {type(error).__name__}: {error}"
        request_ids = [r for r in scheduler_output.num_scheduled_tokens
                       if r in self.scheduler.requests]
        for request_id in request_ids:
            self.kv_cache_manager.uncache_blocks(request_id)
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)
        self.errored.update(dict.fromkeys(request_ids, reason))
        return [EngineCoreOutput(r, [], finish_reason="abort") for r in request_ids]

    def take_errored(self) -> dict[str, str]:
        errored, self.errored = self.errored, {}
        return errored

    def shutdown(self) -> None:
        if self.kv_event_publisher is not None:
            self.kv_event_publisher.shutdown()
        self.executor.shutdown()
        if self.connector is not None:
            self.connector.shutdown()
