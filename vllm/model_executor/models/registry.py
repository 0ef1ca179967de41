"""Hugging Face architecture name -> model class, imported only when asked for."""
import importlib

import torch.nn as nn

# architecture name -> (module under vllm.model_executor.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "DeepseekV2ForCausalLM": ("deepseek_v2", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("deepseek_v2", "DeepseekV3ForCausalLM"),
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_cls(architectures: list[str]) -> type[nn.Module]:
    """The class for the first supported name in `architectures` (a config's
    `architectures` field); ValueError when none is supported."""
    for arch in architectures or []:
        if arch in _MODELS:
            module_name, class_name = _MODELS[arch]
            module = importlib.import_module(f"vllm.model_executor.models.{module_name}")
            return getattr(module, class_name)
    named = f"unsupported model architecture(s) {list(architectures)}" if architectures \
        else "the model config names no architectures"
    raise ValueError(f"{named}; supported: {', '.join(supported_architectures())}")
