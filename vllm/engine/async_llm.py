"""AsyncLLM: streaming generation for the API server; the engine core runs in its own process."""
import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Protocol

from vllm.core.messages import (EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest,
                                SchedulerStats)
from vllm.engine.admission import admit, prepare
from vllm.engine.core_client import EngineCoreClient, EngineDeadError, KVTransferError
from vllm.engine.dp_client import make_engine_client
from vllm.engine.output_processor import OutputKind, OutputProcessor
from vllm.engine.processor import InvalidRequestError, ParsedPrompt, Processor, PromptType
from vllm.logger import init_logger
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.tokenizer import get_tokenizer

logger = init_logger(__name__)


class StatLogger(Protocol):
    """Receives what the API server's metrics need; every method must be cheap. `engine`
    is the data-parallel rank whose engine core ran the request (0 without DP)."""

    def record_scheduler_stats(self, stats: SchedulerStats, engine: int) -> None: ...

    def record_first_token(self, num_prompt_tokens: int, time_to_first_token: float,
                           engine: int) -> None: ...

    def record_generation_tokens(self, num_tokens: int, engine: int) -> None: ...

    def record_finished(self, e2e_latency: float, time_per_output_token: Optional[float],
                        finish_reason: str, engine: int) -> None: ...


@dataclass
class _Timing:
    arrival: float
    num_prompt_tokens: int
    first_token: Optional[float] = None
    last_token: Optional[float] = None
    num_tokens: int = 0


class _RequestStream:

    def __init__(self, child_ids: list[str]):
        self.child_ids = child_ids
        self.queue: asyncio.Queue = asyncio.Queue()


class AsyncLLM:
    """Takes requests from many coroutines, streams RequestOutput deltas back to each.

    One output-handler task routes engine-core outputs to per-request queues. A request whose
    consumer stops iterating (cancellation, client disconnect) is aborted in the engine.
    """

    def __init__(self, vllm_config, tokenizer, client: EngineCoreClient,
                 log_requests: bool = False, stat_logger: Optional[StatLogger] = None):
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.tokenizer = tokenizer
        self.processor = Processor(self.model_config, tokenizer)
        self.output_processor = OutputProcessor(tokenizer)
        self.client = client
        self.log_requests = log_requests
        self.stat_logger = stat_logger
        self.latest_stats = SchedulerStats()
        self._streams: dict[str, _RequestStream] = {}
        self._parent_of: dict[str, str] = {}
        self._timings: dict[str, _Timing] = {}
        self._output_task: Optional[asyncio.Task] = None
        self._draining = False

    @classmethod
    async def from_engine_args(cls, engine_args, log_requests: bool = False,
                               stat_logger: Optional[StatLogger] = None) -> "AsyncLLM":
        """Resolve the config (ConfigError on bad values), then as from_vllm_config."""
        return await cls.from_vllm_config(engine_args.create_engine_config(), log_requests,
                                          stat_logger)

    @classmethod
    async def from_vllm_config(cls, vllm_config, log_requests: bool = False,
                               stat_logger: Optional[StatLogger] = None,
                               client=None) -> "AsyncLLM":
        """Start the engine process (or use `client`, not started yet) and load the
        tokenizer meanwhile; EngineStartError if the engine cannot start."""
        client = client or make_engine_client(vllm_config)
        client.start()
        try:
            model_config = vllm_config.model_config
            tokenizer = await asyncio.to_thread(get_tokenizer, model_config.tokenizer,
                                                model_config.trust_remote_code)
            await client.wait_ready()
        except BaseException:
            client.shutdown()
            raise
        engine = cls(vllm_config, tokenizer, client, log_requests, stat_logger)
        engine.start_output_handler()
        return engine

    def start_output_handler(self) -> None:
        self._output_task = asyncio.get_running_loop().create_task(self._run_output_handler())
        self.client.request_stats()  # so the first metrics show the idle engine

    def check_health(self) -> None:
        if self._draining:
            raise EngineDeadError("the server is shutting down")
        self.client.check_health()

    # ---- requests ------------------------------------------------------------------------
    def generate(self, prompt: PromptType | ParsedPrompt, sampling_params: SamplingParams,
                 request_id: str,
                 kv_transfer_params: Optional[dict] = None) -> AsyncIterator[RequestOutput]:
        """Add the request now (bad input raises here, before any streaming starts) and
        return an iterator of RequestOutput deltas (new text and tokens only)."""
        stream = self.add_request(request_id, prompt, sampling_params, kv_transfer_params)
        return self._iterate(request_id, stream)

    async def _iterate(self, request_id: str, stream: "_RequestStream"
                       ) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def add_request(self, request_id: str, prompt: PromptType | ParsedPrompt,
                    params: SamplingParams,
                    kv_transfer_params: Optional[dict] = None) -> _RequestStream:
        self.check_health()
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        admission = prepare(self.processor, request_id, prompt, params, kv_transfer_params)
        num_prompt_tokens = len(admission.prompt.token_ids)
        stream = _RequestStream(admission.child_ids)
        admit(admission, self.output_processor, OutputKind.DELTA,
              functools.partial(self._send_child, request_id, num_prompt_tokens))
        self._streams[request_id] = stream
        if self.log_requests:
            logger.info("request %s: %d prompt tokens, %s", request_id, num_prompt_tokens,
                        params)
        return stream

    def _send_child(self, request_id: str, num_prompt_tokens: int,
                    child: EngineCoreRequest) -> None:
        self._parent_of[child.request_id] = request_id
        self._timings[child.request_id] = _Timing(time.monotonic(), num_prompt_tokens)
        self.client.add_request(child)

    def abort(self, request_id: str) -> None:
        """Stop a request wherever it is; unknown or finished ids are ignored."""
        stream = self._forget(request_id)
        if stream is None:
            return
        self.client.abort_requests(stream.child_ids)
        self.output_processor.abort_requests(stream.child_ids)
        if self.log_requests:
            logger.info("request %s aborted", request_id)

    def _forget(self, request_id: str) -> Optional[_RequestStream]:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            for child_id in stream.child_ids:
                self._parent_of.pop(child_id, None)
                self._timings.pop(child_id, None)
        return stream

    # ---- outputs -------------------------------------------------------------------------
    async def _run_output_handler(self) -> None:
        while True:
            try:
                batch = await self.client.get_output()
            except EngineDeadError as error:
                self._fail_all(error)
                return
            try:
                self._handle_outputs(batch)
            except Exception as error:  # a bug must not take every other request down
                logger.exception("failed to process engine outputs")
                self._fail_batch(batch, error)

    def _handle_outputs(self, batch: EngineCoreOutputs) -> None:
        engine = batch.engine_index
        if batch.scheduler_stats is not None:
            self.latest_stats = batch.scheduler_stats
            if self.stat_logger is not None:
                self.stat_logger.record_scheduler_stats(batch.scheduler_stats, engine)
        for child_id, message in batch.rejected.items():
            self._fail_request(child_id, InvalidRequestError(message))
        for child_id, message in batch.failed.items():
            self._fail_request(child_id, KVTransferError(message))
        for child_id, message in batch.errored.items():
            self._fail_request(child_id, RuntimeError(message))
        self._record_tokens(batch.outputs, engine)
        request_outputs, stopped = self.output_processor.process_outputs(batch.outputs)
        if stopped:
            self.client.abort_requests(stopped)
        finished = {o.request_id: o.finish_reason for o in batch.outputs if o.finished}
        finished.update((child_id, "stop") for child_id in stopped)
        self._record_finished(finished, engine)
        for output in request_outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.queue.put_nowait(output)
            if output.finished:
                self._forget(output.request_id)

    def _record_tokens(self, outputs: list[EngineCoreOutput], engine: int) -> None:
        now = time.monotonic()
        for output in outputs:
            timing = self._timings.get(output.request_id)
            if timing is None or not output.new_token_ids:
                continue
            if timing.first_token is None:
                timing.first_token = now
                if self.stat_logger is not None:
                    self.stat_logger.record_first_token(timing.num_prompt_tokens,
                                                        now - timing.arrival, engine)
            timing.last_token = now
            timing.num_tokens += len(output.new_token_ids)
            if self.stat_logger is not None:
                self.stat_logger.record_generation_tokens(len(output.new_token_ids), engine)

    def _record_finished(self, finished: dict[str, str], engine: int) -> None:
        if self.stat_logger is None:
            return
        now = time.monotonic()
        for child_id, reason in finished.items():
            timing = self._timings.get(child_id)
            if timing is None:
                continue
            per_token = None
            if timing.num_tokens > 1:
                per_token = (timing.last_token - timing.first_token) / (timing.num_tokens - 1)
            self.stat_logger.record_finished(now - timing.arrival, per_token, reason, engine)

    def _fail_request(self, child_id: str, error: BaseException) -> None:
        parent_id = self._parent_of.get(child_id)
        stream = self._streams.get(parent_id) if parent_id is not None else None
        if stream is None:
            return
        self.abort(parent_id)
        stream.queue.put_nowait(error)

    def _fail_batch(self, batch: EngineCoreOutputs, error: Exception) -> None:
        for output in batch.outputs:
            self._fail_request(output.request_id, RuntimeError(
                f"internal error while processing outputs: {error}"))

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            stream = self._forget(request_id)
            self.output_processor.abort_requests(stream.child_ids)
            stream.queue.put_nowait(error)

    # ---- misc ----------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def drain(self, timeout: float) -> None:
        """Refuse new requests, give running ones `timeout` seconds, then fail the rest (so
        their streams end with an error event instead of a cut connection)."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self._streams:
            logger.info("aborting %d requests still running at shutdown", len(self._streams))
            self._fail_all(EngineDeadError("the server is shutting down"))

    async def shutdown(self) -> None:
        """Fail what is still running, stop the output handler and the engine process."""
        self._fail_all(EngineDeadError("the server is shutting down"))
        if self._output_task is not None:
            self._output_task.cancel()
            await asyncio.gather(self._output_task, return_exceptions=True)
        self.client.shutdown()

