"""Per-forward state (attention metadata, KV caches) scoped to one model call."""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class ForwardContext:
    attn_metadata: Any
    kv_caches: dict[str, torch.Tensor]
    kv_connector: Any = None  # worker half of the KV connector, told as each layer's KV lands


_current: Optional[ForwardContext] = None


def get_forward_context() -> Optional[ForwardContext]:
    return _current


@contextmanager
def set_forward_context(attn_metadata: Any, kv_caches: dict[str, torch.Tensor],
                        kv_connector: Any = None):
    global _current
    previous = _current
    _current = ForwardContext(attn_metadata, kv_caches, kv_connector)
    try:
        yield _current
    finally:
        _current = previous
