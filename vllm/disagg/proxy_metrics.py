"""The proxy's Prometheus metrics, kept in a private registry.

Per instance (labels role, url): `vllm_proxy:instance_healthy` and
`vllm_proxy:instance_in_flight` gauges (read from the instance registry at scrape time),
`vllm_proxy:instance_requests_total` and `vllm_proxy:instance_failures_total` counters.
Proxy level: `vllm_proxy:requests_total`, `vllm_proxy:prefill_failures_total`,
`vllm_proxy:prefill_fallbacks_total`, `vllm_proxy:decode_failures_total`.
"""
from typing import Iterator

from prometheus_client import (CollectorRegistry, Counter, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vllm.disagg.instances import Instance, InstanceRegistry

_LABELS = ["role", "url"]

disable_created_metrics()  # as the serve metrics: no *_created series next to counters


class _InstanceGauges:
    """Collects health and in-flight gauges from the instance registry on each scrape."""

    def __init__(self, instances: InstanceRegistry):
        self._instances = instances

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily("vllm_proxy:instance_healthy",
                                    "1 when the instance is in rotation", labels=_LABELS)
        in_flight = GaugeMetricFamily("vllm_proxy:instance_in_flight",
                                      "Requests the proxy has open to the instance",
                                      labels=_LABELS)
        for inst in self._instances.instances():
            healthy.add_metric([inst.role, inst.url], 1.0 if inst.healthy else 0.0)
            in_flight.add_metric([inst.role, inst.url], float(inst.in_flight))
        yield healthy
        yield in_flight


class ProxyMetrics:
    """Counters the proxy updates, and the text exposition of all its metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, instances: InstanceRegistry):
        self.registry = CollectorRegistry()
        self.registry.register(_InstanceGauges(instances))
        self.requests = self._counter("requests", "Generate requests accepted")
        self.prefill_failures = self._counter(
            "prefill_failures", "Prefill requests that failed or could not reach P")
        self.prefill_fallbacks = self._counter(
            "prefill_fallbacks", "Requests sent to a decoder alone (no usable prefiller)")
        self.decode_failures = self._counter(
            "decode_failures", "Decode requests that failed (5xx, unreachable, broken)")
        self._instance_requests = self._counter(
            "instance_requests", "Requests sent to the instance", _LABELS)
        self._instance_failures = self._counter(
            "instance_failures", "Requests to the instance that failed", _LABELS)
        for inst in instances.instances():
            self._instance_requests.labels(inst.role, inst.url)
            self._instance_failures.labels(inst.role, inst.url)

    def _counter(self, name: str, documentation: str, labels=()) -> Counter:
        return Counter(f"vllm_proxy:{name}", documentation, list(labels),
                       registry=self.registry)

    def count_sent(self, instance: Instance) -> None:
        self._instance_requests.labels(instance.role, instance.url).inc()

    def count_failed(self, instance: Instance) -> None:
        self._instance_failures.labels(instance.role, instance.url).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every proxy metric."""
        return generate_latest(self.registry)
