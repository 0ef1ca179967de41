"""When each request is sent: gamma-distributed gaps at a mean rate (Poisson at burstiness 1)."""
import numpy as np


def arrival_offsets(num_requests: int, request_rate: float, burstiness: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Seconds after the start at which each request is sent; the first goes at 0.

    Gaps follow Gamma(shape=burstiness, scale=1/(rate*burstiness)), so their mean is
    1/rate whatever the burstiness; an infinite rate sends everything at once.
    """
    if burstiness <= 0:
        raise ValueError(f"--burstiness must be positive, got {burstiness}")
    if request_rate <= 0:
        raise ValueError(f"--request-rate must be positive, got {request_rate}")
    if num_requests == 0 or request_rate == float("inf"):
        return np.zeros(num_requests)
    rng = np.random.default_rng(seed)
    scale = 1.0 / (request_rate * burstiness)
    gaps = rng.gamma(shape=burstiness, scale=scale, size=num_requests - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))
