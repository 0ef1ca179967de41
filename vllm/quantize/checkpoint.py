"""A Hugging Face folder in, a W8A8_DYNAMIC or W8A8 folder out: the quantized safetensors
file, quant_model_description.json, and the config / tokenizer files copied."""
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

import torch

from vllm.model_executor.layers.quantization.ascend_config import (
    FLOAT_DTYPES, TensorInfo, checkpoint_headers)
from vllm.model_executor.layers.quantization.ascend_format import (
    DESCRIPTION_FILE, FLOAT, QUANTIZED, W8A8, W8A8_DYNAMIC, WEIGHT_FILES, is_skipped,
    split_name)
from vllm.model_executor.layers.fused_moe.weights import EXPERTS_MODULE
from vllm.model_executor.model_loader.safetensors_weights import (
    INDEX_FILE, iterate_safetensors)
from vllm.quantize.tensors import dynamic_tensors, static_tensors

FORMAT_VERSION = "1.0.0"
_NOT_COPIED = (INDEX_FILE, DESCRIPTION_FILE, "conversion-complete")
EMBEDDING_SUFFIXES = ("embed_tokens",)  # looked up, never multiplied: no W8A8 method


def layer_method(name: str, info: TensorInfo, method: str, skip: tuple[str, ...]) -> str:
    """The method of the layer whose tensor `name` is: FLOAT for skipped layers, embeddings
    and anything but a 2-D float weight; routed experts always W8A8_DYNAMIC."""
    prefix, suffix = split_name(name)
    if suffix != "weight" or len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES \
            or is_skipped(prefix, skip) or is_skipped(prefix, EMBEDDING_SUFFIXES):
        return FLOAT
    return W8A8_DYNAMIC if f".{EXPERTS_MODULE}." in f".{prefix}." else method


def plan_methods(headers: dict[str, TensorInfo], method: str, skip: tuple[str, ...]
                 ) -> dict[str, str]:
    """Checkpoint layer prefix -> method, for the layers that get quantized."""
    plan = {}
    for name, info in headers.items():
        chosen = layer_method(name, info, method, skip)
        if chosen != FLOAT:
            plan[split_name(name)[0]] = chosen
    return plan


def quantized_tensors(folder: str, plan: dict[str, str], ranges: dict[str, tuple],
                      model_dtype: torch.dtype, progress=None
                      ) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(name, tensor, method) of every output tensor, quantized layers' tensors in place of
    their weights; a static layer's bias is folded into its quant_bias."""
    biases = {name: tensor for name, tensor in iterate_safetensors(folder)
              if name.endswith(".bias") and plan.get(split_name(name)[0]) == W8A8} \
        if W8A8 in plan.values() else {}
    for name, tensor in iterate_safetensors(folder):
        if progress is not None:
            progress.update(1)
        prefix, suffix = split_name(name)
        method = plan.get(prefix, FLOAT)
        if method == FLOAT:
            yield name, tensor, FLOAT
        elif suffix == "bias":
            if method == W8A8_DYNAMIC:
                yield name, tensor, method
        elif method == W8A8_DYNAMIC:
            for part, value in dynamic_tensors(tensor, model_dtype).items():
                yield f"{prefix}.{part}", value, method
        else:
            tensors = static_tensors(tensor, biases.get(f"{prefix}.bias"), *ranges[prefix],
                                     model_dtype)
            for part, value in tensors.items():
                yield f"{prefix}.{part}", value, method


def quantize_checkpoint(source: str, output: str, method: str, skip: tuple[str, ...],
                        prompts: Optional[list[str]] = None,
                        tokenizer: Optional[str] = None) -> str:
    """Write `source` (a Hugging Face folder) quantized with `method` into `output`, which
    must not exist yet (written in a staging folder, then renamed). W8A8 calibrates on
    `prompts`, tokenized by `tokenizer` (default: the source's). Returns `output`."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    if method not in QUANTIZED:
        raise ValueError(f"--method must be one of {', '.join(QUANTIZED)}, got {method!r}")
    if os.path.exists(output):
        raise ValueError(f"{output} exists already; choose a new output folder")
    headers = checkpoint_headers(source)
    plan = plan_methods(headers, method, skip)
    if not plan:
        raise ValueError(f"no linear layer of {source} is left to quantize (--skip {skip})")
    ranges = calibration_ranges(source, plan, prompts, tokenizer or source)
    model_dtype = checkpoint_dtype(headers)
    tensors, description = {}, {"model_quant_type": method, "version": FORMAT_VERSION}
    with tqdm(total=len(headers), desc="quantizing", unit="tensor") as bar:
        for name, tensor, layer in quantized_tensors(source, plan, ranges, model_dtype, bar):
            tensors[name] = tensor.contiguous()
            description[name] = layer
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".quantize-", dir=parent)
    try:
        save_file(tensors, os.path.join(staging, WEIGHT_FILES[method]))
        with open(os.path.join(staging, DESCRIPTION_FILE), "w", encoding="utf-8") as handle:
            json.dump(description, handle, indent=2)
        copy_side_files(source, staging)
        os.chmod(staging, 0o755)  # mkdtemp made it private
        os.rename(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def calibration_ranges(source: str, plan: dict[str, str], prompts: Optional[list[str]],
                       tokenizer: str) -> dict[str, tuple]:
    static = {prefix for prefix, method in plan.items() if method == W8A8}
    if not static:
        return {}
    if not prompts:
        raise ValueError("W8A8 (static) calibrates its input scales on text: give "
                         "--calib-prompt or --calib-file")
    from vllm.quantize.calibrate import input_ranges
    return input_ranges(source, tokenizer, prompts, static)


def checkpoint_dtype(headers: dict[str, TensorInfo]) -> torch.dtype:
    """The float dtype of the checkpoint's first float tensor (float32 when it has none)."""
    return next((FLOAT_DTYPES[info.dtype] for info in headers.values()
                 if info.dtype in FLOAT_DTYPES), torch.float32)


def copy_side_files(source: str, target: str) -> None:
    """config.json, tokenizer and generation files: every top-level file but the weights."""
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and not name.endswith(".safetensors") \
                and name not in _NOT_COPIED:
            shutil.copy2(path, os.path.join(target, name))
