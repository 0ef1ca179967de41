"""Qwen2: the Llama layout with biases on the q/k/v projections."""
from typing import Any

from vllm.model_executor.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 causal LM (same interface as LlamaForCausalLM)."""

    def __init__(self, hf_config: Any, prefix: str = ""):
        layer_types = getattr(hf_config, "layer_types", None) or []
        if "sliding_attention" in layer_types:
            raise ValueError("Qwen2 with use_sliding_window=True is not supported")
        super().__init__(hf_config, prefix)

    @staticmethod
    def layer_biases(config: Any) -> tuple[bool, bool, bool]:
        return True, False, False
