"""VLLM_BATCH_INVARIANT=1: every token's logits bit for bit the same whatever shares its step.

In this mode every linear layer multiplies through a fixed-order kernel at every batch size
(the GGUF-block kernel, or the dense float32 one), and every query token, prefilled or
decoded, attends through the paged decode kernel over its own causal prefix. A token's
logits then do not depend on the other requests of the step, on how its prompt was
chunked, or on whether its KV was computed here, found in the prefix cache or received
from a prefill instance. Tensor-parallel ranks split each sum, so TP=N equals TP=1 only
up to rounding (tests apply the near-tie rule there).
"""
import os

from vllm.config import ConfigError

BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"


def batch_invariant_requested() -> bool:
    """VLLM_BATCH_INVARIANT as a bool: unset, "" or "0" off, "1" on, anything else an error."""
    value = os.environ.get(BATCH_INVARIANT_ENV, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ConfigError(f"{BATCH_INVARIANT_ENV} must be 0 or 1, got {value!r}")
