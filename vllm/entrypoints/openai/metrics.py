"""Prometheus metrics with vLLM's names, fed by AsyncLLM (it is a StatLogger)."""
import os
from typing import Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, disable_created_metrics, generate_latest)
from prometheus_client.multiprocess import MultiProcessCollector

from vllm.core.messages import SchedulerStats

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set before prometheus_client is imported

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0)

disable_created_metrics()  # as vLLM: no *_created series next to the counters


class ServerMetrics:
    """One registry per server, so that several apps in one process never collide. Every
    series is labelled by model_name and engine (the data-parallel rank), as vLLM's."""

    content_type = CONTENT_TYPE_LATEST
    labels = ("model_name", "engine")

    def __init__(self, model_name: str, num_engines: int = 1):
        self.registry = CollectorRegistry()
        self._model_name = model_name

        def gauge(name, doc):
            # Every API server sees the same engine stats: the latest one wins.
            return Gauge(name, doc, self.labels, registry=self.registry,
                         multiprocess_mode="mostrecent")

        def counter(name, doc):
            return Counter(name, doc, self.labels, registry=self.registry)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, self.labels, buckets=buckets, registry=self.registry)

        self.num_running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.num_waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage as a fraction (1 means 100 percent).")
        self.free_blocks = gauge("vllm:num_free_kv_blocks", "Free KV-cache blocks.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefilled prompt tokens.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Preempted requests.")
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in tokens looked up.")
        self.prefix_hits = counter("vllm:prefix_cache_hits",
                                   "Prefix cache hits, in tokens found cached.")
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Time to the first generated token.", TTFT_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Time per generated token after the first.", TPOT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds",
                             "Latency from arrival to the last token.", E2E_BUCKETS)
        self._success = Counter("vllm:request_success", "Finished requests.",
                                [*self.labels, "finished_reason"], registry=self.registry)
        # (counter, engine) -> the engine's total already counted: engines send totals.
        self._seen_totals: dict[tuple[Counter, int], int] = {}
        # With several API servers only the first counts the engines' totals.
        self.counts_engine_events = True
        for engine in range(num_engines):  # every series exists from the start
            for metric in (self.num_running, self.num_waiting, self.kv_usage,
                           self.free_blocks, self.prompt_tokens, self.generation_tokens,
                           self.preemptions, self.prefix_queries, self.prefix_hits,
                           self.ttft, self.tpot, self.e2e):
                self._of(metric, engine)

    def _of(self, metric, engine: int):
        return metric.labels(self._model_name, str(engine))

    def record_scheduler_stats(self, stats: SchedulerStats, engine: int = 0) -> None:
        self._of(self.num_running, engine).set(stats.num_running)
        self._of(self.num_waiting, engine).set(stats.num_waiting)
        self._of(self.kv_usage, engine).set(stats.kv_cache_usage)
        self._of(self.free_blocks, engine).set(stats.num_free_blocks)
        self._count_total(self.preemptions, engine, stats.num_preemptions)
        self._count_total(self.prefix_queries, engine, stats.prefix_cache_queries)
        self._count_total(self.prefix_hits, engine, stats.prefix_cache_hits)

    def _count_total(self, metric: Counter, engine: int, total: int) -> None:
        key = (metric, engine)
        seen = self._seen_totals.get(key, 0)
        if total > seen:
            if self.counts_engine_events:
                self._of(metric, engine).inc(total - seen)
            self._seen_totals[key] = total

    def record_first_token(self, num_prompt_tokens: int, time_to_first_token: float,
                           engine: int = 0) -> None:
        self._of(self.prompt_tokens, engine).inc(num_prompt_tokens)
        self._of(self.ttft, engine).observe(time_to_first_token)

    def record_generation_tokens(self, num_tokens: int, engine: int = 0) -> None:
        self._of(self.generation_tokens, engine).inc(num_tokens)

    def record_finished(self, e2e_latency: float, time_per_output_token: Optional[float],
                        finish_reason: str, engine: int = 0) -> None:
        self._of(self.e2e, engine).observe(e2e_latency)
        if time_per_output_token is not None:
            self._of(self.tpot, engine).observe(time_per_output_token)
        self._success.labels(self._model_name, str(engine), finish_reason).inc()

    def render(self) -> bytes:
        """This process's series, or with several API servers (PROMETHEUS_MULTIPROC_DIR)
        every server's, counters summed."""
        if MULTIPROC_DIR_ENV not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
