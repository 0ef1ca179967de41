"""Facts of the W8A8 checkpoint format vllm-ascend reads (msModelSlim's output).

A quantized folder holds `quant_model_description.json` beside its safetensors: every
tensor name mapped to the method of its layer, plus a few metadata keys. Sources:
vllm-ascend v0.9.x `vllm_ascend/quantization/{quant_config,quantizer,w8a8,w8a8_dynamic}.py`
and MindIE-LLM's W8A8 feature guide (the dtype / shape tables).
"""
from typing import Optional

import torch

DESCRIPTION_FILE = "quant_model_description.json"
ASCEND = "ascend"  # the --quantization name vllm-ascend registers

W8A8_DYNAMIC = "W8A8_DYNAMIC"
W8A8 = "W8A8"
FLOAT = "FLOAT"
METHODS = (W8A8_DYNAMIC, W8A8, FLOAT)
QUANTIZED = (W8A8_DYNAMIC, W8A8)
# Top-level keys that describe the file, not a tensor.
METADATA_KEYS = ("model_quant_type", "version", "group_size", "metadata", "optional",
                 "is_rot_used")
# Keys of features this engine does not run (attention / KV-cache quantization).
UNSUPPORTED_KEYS = ("fa_quant_type", "kv_quant_type", "kv_cache_type")

# Tensors of a layer `<prefix>.<suffix>` per method; `weight_offset` may be absent.
# weight (N, K) int8; weight_scale / weight_offset (N, 1) or (N,); input_scale /
# input_offset (1,); quant_bias (N,) int32; deq_scale (N,) float32, or int64 holding the
# float32's bits (float16 checkpoints, as npu_quant_matmul takes it then).
REQUIRED = {
    W8A8_DYNAMIC: ("weight", "weight_scale"),
    W8A8: ("weight", "input_scale", "input_offset", "quant_bias", "deq_scale"),
}
OPTIONAL = {W8A8_DYNAMIC: ("weight_offset", "bias"),
            W8A8: ("weight_scale", "weight_offset", "bias")}
PER_CHANNEL = ("weight_scale", "weight_offset", "quant_bias", "deq_scale")
PER_TENSOR = ("input_scale", "input_offset")
QUANT_SUFFIXES = tuple(dict.fromkeys(s for m in QUANTIZED
                                     for s in REQUIRED[m] + OPTIONAL[m] if s != "bias"))

# What msModelSlim leaves FLOAT by default (its examples' disable_names): the LM head; for
# DeepSeek the router (mlp.gate) and kv_b_proj, whose weight MLA absorbs.
DEFAULT_SKIP = ("lm_head", "mlp.gate", "kv_b_proj")
# The msModelSlim weight file names.
WEIGHT_FILES = {W8A8_DYNAMIC: "quant_model_weight_w8a8_dynamic.safetensors",
                W8A8: "quant_model_weight_w8a8.safetensors"}


def split_name(name: str) -> tuple[str, str]:
    """("model.layers.0.mlp.up_proj", "weight_scale") for a tensor name."""
    prefix, _, suffix = name.rpartition(".")
    return prefix, suffix


def encode_deq_scale(deq_scale: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """deq_scale as stored: int64 holding the float32 bits for float16 models, else float32."""
    deq32 = deq_scale.to(torch.float32).contiguous()
    if model_dtype == torch.float16:
        return deq32.view(torch.int32).to(torch.int64)
    return deq32


def decode_deq_scale(stored: torch.Tensor) -> torch.Tensor:
    """The float32 deq_scale of a checkpoint tensor (int64 float32-bits or a float)."""
    if stored.dtype == torch.int64:
        return (stored & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
    return stored.to(torch.float32)


def is_skipped(module_name: str, skip: tuple[str, ...]) -> bool:
    """A skip pattern names a module or the last parts of its name (`mlp.gate` skips
    `model.layers.3.mlp.gate`, not `mlp.gate_proj`)."""
    return any(module_name == p or module_name.endswith("." + p) for p in skip)


def stored_dtype(suffix: str, model_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype `vllm quantize` writes for a quantization tensor (deq_scale: see above)."""
    return {"weight": torch.int8, "weight_scale": torch.float32, "quant_bias": torch.int32,
            "weight_offset": model_dtype, "input_scale": model_dtype,
            "input_offset": model_dtype}.get(suffix)
