"""A Hugging Face config's KV-cache shape per layer: its KV heads and head size (torch-free)."""
from typing import Any


def num_kv_heads(hf_config: Any) -> int:
    """KV heads of the whole model (before any tensor-parallel split)."""
    return getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads


def head_size(hf_config: Any) -> int:
    return getattr(hf_config, "head_dim", None) or \
        hf_config.hidden_size // hf_config.num_attention_heads
