"""Prometheus metrics with vLLM's names, fed by AsyncLLM (it is a StatLogger)."""
from typing import Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, disable_created_metrics, generate_latest)

from vllm.core.messages import SchedulerStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0)

disable_created_metrics()  # as vLLM: no *_created series next to the counters


class ServerMetrics:
    """One registry per server, so that several apps in one process never collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=self.registry).labels(model_name)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.num_running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.num_waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage as a fraction (1 means 100 percent).")
        self.free_blocks = gauge("vllm:num_free_kv_blocks", "Free KV-cache blocks.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefilled prompt tokens.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Preempted requests.")
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Time to the first generated token.", TTFT_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds",
                              "Time per generated token after the first.", TPOT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds",
                             "Latency from arrival to the last token.", E2E_BUCKETS)
        self._success = Counter("vllm:request_success", "Finished requests.",
                                ["model_name", "finished_reason"], registry=self.registry)
        self._model_name = model_name
        self._seen_preemptions = 0

    def record_scheduler_stats(self, stats: SchedulerStats) -> None:
        self.num_running.set(stats.num_running)
        self.num_waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        self.free_blocks.set(stats.num_free_blocks)
        if stats.num_preemptions > self._seen_preemptions:
            self.preemptions.inc(stats.num_preemptions - self._seen_preemptions)
            self._seen_preemptions = stats.num_preemptions

    def record_first_token(self, num_prompt_tokens: int, time_to_first_token: float) -> None:
        self.prompt_tokens.inc(num_prompt_tokens)
        self.ttft.observe(time_to_first_token)

    def record_generation_tokens(self, num_tokens: int) -> None:
        self.generation_tokens.inc(num_tokens)

    def record_finished(self, e2e_latency: float, time_per_output_token: Optional[float],
                        finish_reason: str) -> None:
        self.e2e.observe(e2e_latency)
        if time_per_output_token is not None:
            self.tpot.observe(time_per_output_token)
        self._success.labels(self._model_name, finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
