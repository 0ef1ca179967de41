"""Loading a W8A8 checkpoint: each layer's method from the description, its int8 parameters
made before the weights stream in (through the layers' own loaders: TP shards and fused
projections as for float weights), the checkpoint tensors put in the layers' form, and the
int8 weights assembled once all is loaded."""
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from vllm.config import ConfigError
from vllm.logger import init_logger
from vllm.model_executor.layers.fused_moe import FusedMoE
from vllm.model_executor.layers.fused_moe.weights import EXPERT_SHARDS
from vllm.model_executor.layers.quantization.ascend_config import AscendQuantConfig
from vllm.model_executor.layers.quantization.ascend_format import (
    DESCRIPTION_FILE, FLOAT, PER_CHANNEL, PER_TENSOR, W8A8, W8A8_DYNAMIC, decode_deq_scale,
    split_name)
from vllm.model_executor.layers.quantization.w8a8_experts import W8A8DynamicExpertsMethod
from vllm.model_executor.layers.quantization.w8a8_linear import LINEAR_METHODS, dequantized
from vllm.model_executor.models.weight_mapping import expected_checkpoint_names

logger = init_logger(__name__)


def quantize_layers(model: nn.Module, config: AscendQuantConfig) -> int:
    """Give every layer the description quantizes its method and int8 parameters; returns
    how many. A quantized tensor no layer of the model can take stops start-up."""
    stacked = getattr(model, "stacked_params", ())
    taken: set[str] = set()
    count = 0
    for name, module in model.named_modules():
        prefixes = layer_prefixes(name, module, stacked)
        if prefixes is None:
            continue
        taken.update(prefixes)
        method = config.shared_method(prefixes, name)
        if method == FLOAT:
            continue
        module.quant_method = make_method(module, method, config.suffixes_of(prefixes[0]), name)
        module.quant_method.create_weights(module, name)
        count += 1
    model_names = expected_checkpoint_names(dict(model.named_parameters()), stacked)
    for prefix in sorted(set(config.methods) - taken):
        if f"{prefix}.weight" in model_names:
            raise ConfigError(f"{prefix}.weight: {config.methods[prefix]} is not supported "
                              f"for this layer; {DESCRIPTION_FILE} must keep it FLOAT")
    return count


def layer_prefixes(name: str, module: nn.Module, stacked) -> list[str] | None:
    """The checkpoint layers module `name` holds (several when fused), or None for a module
    that cannot be quantized."""
    if isinstance(module, FusedMoE):
        return [f"{name}.{expert}.{projection}" for expert in range(module.num_experts)
                for _, projection in EXPERT_SHARDS.values()]
    if not hasattr(module, "quant_method"):
        return None
    weights = expected_checkpoint_names([f"{name}.weight"], stacked)
    return sorted(split_name(weight)[0] for weight in weights)


def make_method(module: nn.Module, method: str, suffixes: tuple[str, ...], name: str):
    if not isinstance(module, FusedMoE):
        return LINEAR_METHODS[method](suffixes)
    if method != W8A8_DYNAMIC:
        raise ConfigError(f"{name}: routed experts must be {W8A8_DYNAMIC} (per-token "
                          f"activations), got {method}")
    return W8A8DynamicExpertsMethod(suffixes)


def adapt_checkpoint(weights: Iterable[tuple[str, torch.Tensor]], config: AscendQuantConfig
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors in the form the layers hold: per-channel and per-tensor
    values flat, deq_scale as float32; a static layer's float bias (folded into its
    quant_bias) dropped."""
    for name, tensor in weights:
        prefix, suffix = split_name(name)
        method = config.methods.get(prefix)
        if method is None:
            yield name, tensor
        elif suffix == "deq_scale":
            yield name, decode_deq_scale(tensor.reshape(-1))
        elif suffix in PER_CHANNEL or suffix in PER_TENSOR:
            yield name, tensor.reshape(-1)
        elif not (suffix == "bias" and method == W8A8):
            yield name, tensor


def finish_loading(model: nn.Module, dtype: torch.dtype) -> None:
    """Assemble every quantized layer's int8 weight; a layer whose float weight is read by
    others (MLA absorbs kv_b_proj's) gets it back dequantized."""
    from vllm.attention.layer import MLAAttention
    for name, module in model.named_modules():
        if getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module, name)
    for module in model.modules():
        if isinstance(module, MLAAttention):
            kv_b_proj = module.impl.kv_b_proj
            if kv_b_proj.quant_method is not None:
                dequantized(kv_b_proj, kv_b_proj.prefix, dtype)
