"""A folder's quant_model_description.json, read and checked against its checkpoint.

Checked once at start-up, from the JSON and the safetensors headers only (no tensor is
read): every method is known, every tensor the description names is in the checkpoint,
every quantized layer has its scales with the right shapes and dtypes, and no int8 tensor
is left undescribed. The first problem stops start-up with one line naming the tensor.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch

from vllm.config import ConfigError, read_json_object
from vllm.logger import init_logger
from vllm.model_executor.layers.quantization.ascend_format import (
    DESCRIPTION_FILE, FLOAT, METADATA_KEYS, METHODS, OPTIONAL, PER_CHANNEL, PER_TENSOR,
    QUANT_SUFFIXES, QUANTIZED, REQUIRED, UNSUPPORTED_KEYS, split_name)

logger = init_logger(__name__)
# safetensors header dtype names
_INT8, _INT32, _INT64 = "I8", "I32", "I64"
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64}
_FLOATS = tuple(FLOAT_DTYPES)


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # as the safetensors header names it: I8, F32, ...


def has_description(folder: str) -> bool:
    return os.path.isdir(folder) and os.path.isfile(os.path.join(folder, DESCRIPTION_FILE))


def checkpoint_headers(folder: str) -> dict[str, TensorInfo]:
    """Shape and dtype of every tensor of the folder's weight files, from their headers."""
    from safetensors import safe_open

    from vllm.model_executor.model_loader.safetensors_weights import safetensors_files
    infos = {}
    for path in safetensors_files(folder):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                infos[name] = TensorInfo(tuple(piece.get_shape()), piece.get_dtype())
    return infos


class AscendQuantConfig:
    """The methods of a checked description: `layer_method(checkpoint layer prefix)` and the
    quantization tensors each quantized layer has (`suffixes_of`)."""

    def __init__(self, methods: dict[str, str], suffixes: dict[str, tuple[str, ...]]):
        self.methods = methods  # checkpoint layer prefix -> method, for quantized layers
        self.suffixes = suffixes  # checkpoint layer prefix -> its quantization tensors

    @classmethod
    def from_folder(cls, folder: str) -> "AscendQuantConfig":
        description = read_description(folder)
        headers = checkpoint_headers(folder)
        methods = check_description(description, headers)
        suffixes = {prefix: tuple(s for s in QUANT_SUFFIXES if f"{prefix}.{s}" in headers)
                    for prefix in methods}
        return cls(methods, suffixes)

    def layer_method(self, prefix: str) -> str:
        return self.methods.get(prefix, FLOAT)

    def shared_method(self, prefixes: list[str], where: str) -> str:
        """The one method of the checkpoint layers fused into module `where`."""
        found = {prefix: self.layer_method(prefix) for prefix in prefixes}
        if len(set(found.values())) > 1:
            shown = ", ".join(f"{p}: {m}" for p, m in found.items())
            raise ConfigError(f"{DESCRIPTION_FILE}: the parts of {where} must share one "
                              f"method, got {shown}")
        suffixes = {self.suffixes.get(prefix) for prefix in prefixes}
        if len(suffixes) > 1:
            raise ConfigError(f"{DESCRIPTION_FILE}: the parts of {where} must have the same "
                              f"quantization tensors: {', '.join(prefixes)}")
        return next(iter(found.values()))

    def suffixes_of(self, prefix: str) -> tuple[str, ...]:
        return tuple(s for s in self.suffixes.get(prefix, ()) if s != "weight")


def read_description(folder: str) -> dict:
    return read_json_object(os.path.join(folder, DESCRIPTION_FILE), DESCRIPTION_FILE)


def check_description(description: dict, headers: dict[str, TensorInfo]) -> dict[str, str]:
    """The quantized layers' methods by checkpoint prefix; ConfigError on the first problem."""
    methods: dict[str, str] = {}
    for key, method in description.items():
        if key in METADATA_KEYS:
            continue
        if key in UNSUPPORTED_KEYS:
            raise ConfigError(f"{DESCRIPTION_FILE}: {key} (attention / KV-cache "
                              "quantization) is not supported")
        if method not in METHODS:
            raise ConfigError(f"{DESCRIPTION_FILE}: {key}: unknown method {method!r} "
                              f"(expected one of {', '.join(METHODS)})")
        if key not in headers:
            raise ConfigError(f"{DESCRIPTION_FILE} names {key}, which the checkpoint does "
                              "not have")
        prefix, suffix = split_name(key)
        if suffix == "weight" and method in QUANTIZED:
            methods[prefix] = method
    for prefix, method in methods.items():
        check_layer(prefix, method, headers)
    check_nothing_stray(methods, headers)
    return methods


def check_layer(prefix: str, method: str, headers: dict[str, TensorInfo]) -> None:
    """The tensors of one quantized layer: present, shaped and typed as the format says."""
    for suffix in REQUIRED[method]:
        if f"{prefix}.{suffix}" not in headers:
            raise ConfigError(f"{prefix}.{suffix}: missing from the checkpoint (a {method} "
                              f"layer needs {', '.join(REQUIRED[method])})")
    weight = headers[f"{prefix}.weight"]
    if weight.dtype != _INT8 or len(weight.shape) != 2:
        raise ConfigError(f"{prefix}.weight: a {method} weight is int8 (N, K), got "
                          f"{weight.dtype} {weight.shape}")
    rows = weight.shape[0]
    for suffix in REQUIRED[method] + OPTIONAL[method]:
        info = headers.get(f"{prefix}.{suffix}")
        if info is not None and suffix != "weight":
            problem = tensor_problem(suffix, info, rows)
            if problem:
                raise ConfigError(f"{prefix}.{suffix}: {problem}")


def tensor_problem(suffix: str, info: TensorInfo, rows: int) -> Optional[str]:
    """Why a quantization tensor of a layer with `rows` outputs is malformed, or None."""
    if suffix in PER_CHANNEL and info.shape not in ((rows,), (rows, 1)):
        return f"shape {info.shape} should be ({rows},) or ({rows}, 1), one per output row"
    if suffix in PER_TENSOR and info.shape not in ((), (1,)):
        return f"shape {info.shape} should be (1,), one value per tensor"
    if suffix == "bias" and info.shape != (rows,):
        return f"shape {info.shape} should be ({rows},)"
    wanted = {"quant_bias": (_INT32,), "deq_scale": (_INT64, "F32")}.get(suffix, _FLOATS)
    if info.dtype not in wanted:
        return f"dtype {info.dtype} should be one of {', '.join(wanted)}"
    return None


def check_nothing_stray(methods: dict[str, str], headers: dict[str, TensorInfo]) -> None:
    """No int8 weight outside a quantized layer, no scale of a float layer."""
    for name, info in headers.items():
        prefix, suffix = split_name(name)
        if prefix in methods:
            continue
        if info.dtype == _INT8:
            raise ConfigError(f"{name} is int8 in the checkpoint, but {DESCRIPTION_FILE} "
                              "does not describe its layer as W8A8_DYNAMIC or W8A8")
        if suffix in QUANT_SUFFIXES and suffix != "weight" and f"{prefix}.weight" in headers:
            raise ConfigError(f"{name}: its layer {prefix} is FLOAT in {DESCRIPTION_FILE}")


def resolve_quantization(requested: Optional[str], model_source: str) -> Optional[str]:
    """The quantization to load `model_source` with. A folder with a description loads as
    "ascend" whether or not it was asked for (vllm-ascend auto-detects it too since its
    PR 6645; v0.9.x needed --quantization ascend), and is checked now; asking for "ascend"
    without one, or for any other method, stops start-up."""
    from vllm.model_executor.layers.quantization.ascend_format import ASCEND
    if requested not in (None, ASCEND):
        raise ConfigError(f"quantization must be {ASCEND!r} (W8A8 checkpoints with a "
                          f"{DESCRIPTION_FILE}) or unset, got {requested!r}")
    if not has_description(model_source):
        if requested == ASCEND:
            raise ConfigError(f"quantization {ASCEND!r} needs {DESCRIPTION_FILE} in the "
                              f"model folder; {model_source} has none")
        return None
    if requested is None:
        logger.info("%s found in %s: loading W8A8 weights (quantization=%s)",
                    DESCRIPTION_FILE, model_source, ASCEND)
    AscendQuantConfig.from_folder(model_source)
    return ASCEND
