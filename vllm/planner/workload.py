"""The traffic a plan is for: lengths, how many requests, how they arrive, the SLOs."""
import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from vllm.benchmarks.serving.arrivals import arrival_offsets


@dataclass(frozen=True)
class Workload:
    """benchmark_serving's random dataset and traffic flags, as numbers."""
    input_len: int
    output_len: int
    num_prompts: int
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        for name in ("input_len", "output_len", "num_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if not self.request_rate > 0:
            raise ValueError(f"--request-rate must be positive, got {self.request_rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ValueError(f"--burstiness must be a positive number, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")

    def arrival_times(self) -> np.ndarray:
        """When each request is ready to go, as benchmark_serving draws them."""
        return arrival_offsets(self.num_prompts, self.request_rate, self.burstiness, self.seed)

    def open_loop(self, request_rate: float, seed: int) -> "Workload":
        """The same requests at another rate with no concurrency cap (for goodput)."""
        return replace(self, request_rate=request_rate, max_concurrency=None, seed=seed)


@dataclass(frozen=True)
class Slos:
    """Per-request objectives; goodput counts a request only when it meets both."""
    ttft_s: float
    tpot_s: float
    attainment: float = 0.9

    def __post_init__(self):
        if not (self.ttft_s > 0 and self.tpot_s > 0):
            raise ValueError(f"SLOs must be positive, got TTFT {self.ttft_s * 1000} ms and "
                             f"TPOT {self.tpot_s * 1000} ms")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"SLO attainment must lie in (0, 1], got {self.attainment}")
