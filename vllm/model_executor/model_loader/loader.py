"""get_model: build the model class for a config and load its checkpoint."""
import contextlib
import os
from collections.abc import Iterator
from typing import Any, Optional, Union

import torch
from torch import nn

from vllm.logger import init_logger
from vllm.model_executor.layers.invariant_kernels import make_batch_invariant
from vllm.model_executor.layers.panel_weights import attach_panels
from vllm.model_executor.layers.quantization.ascend_config import AscendQuantConfig
from vllm.model_executor.layers.quantization.ascend_format import ASCEND, DESCRIPTION_FILE
from vllm.model_executor.layers.quantization.ascend_loading import (
    adapt_checkpoint, finish_loading, quantize_layers)
from vllm.model_executor.model_loader.gguf_block_weights import attach_gguf_blocks
from vllm.model_executor.model_loader.gguf_weights import iterate_gguf
from vllm.model_executor.model_loader.safetensors_weights import iterate_safetensors
from vllm.model_executor.models.registry import resolve_model_cls
from vllm.platforms import current_platform

logger = init_logger(__name__)


def get_model(model_path: str, hf_config: Any, dtype: torch.dtype,
              device: Union[str, torch.device] = "cpu",
              batch_invariant: bool = False, quantization: Optional[str] = None) -> nn.Module:
    """Build the model `hf_config.architectures` names and load its weights.

    `model_path` is a Hugging Face folder with *.safetensors files or a .gguf file; with
    `quantization="ascend"` a folder of W8A8 weights described by its
    quant_model_description.json (layers/quantization/). The model is returned in eval mode
    with gradients disabled; with `batch_invariant` its layers run the platform's
    fixed-order kernels (vllm/batch_invariant.py).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    model_cls = resolve_model_cls(getattr(hf_config, "architectures", None) or [])
    weights = checkpoint_weights(model_path, hf_config, dtype)
    quant_config = quantization_config(quantization, model_path)
    with default_dtype(dtype), torch.device(device):
        model = model_cls(hf_config)
    with torch.no_grad():
        if quant_config is not None:
            logger.info("%d layers load W8A8 weights (%s)", quantize_layers(model, quant_config),
                        DESCRIPTION_FILE)
            weights = adapt_checkpoint(weights, quant_config)
        model.load_weights(weights)
        if quant_config is not None:
            finish_loading(model, dtype)
        if os.path.isdir(model_path):
            packed = attach_gguf_blocks(model, model_path, current_platform.gguf_block_kernel())
            if packed:
                logger.info("%d layers multiply small batches on their GGUF blocks", packed)
        if not batch_invariant:
            panels = attach_panels(model, current_platform.panel_kernel())
            if panels:
                logger.info("%d weights packed into panels for batches of %d to %d tokens",
                            panels, *current_platform.panel_kernel()[2:])
        if batch_invariant:
            switched = make_batch_invariant(model, current_platform.batch_invariant_linear(dtype))
            logger.info("batch-invariant mode: %d linear layers and attention on fixed-order "
                        "kernels at every batch size", switched)
    model.requires_grad_(False)
    return model.eval()


def quantization_config(quantization: Optional[str], model_path: str
                        ) -> Optional[AscendQuantConfig]:
    if quantization is None:
        return None
    if quantization != ASCEND:
        raise ValueError(f"unsupported quantization {quantization!r}")
    return AscendQuantConfig.from_folder(model_path)


def checkpoint_weights(model_path: str, hf_config: Any, dtype: torch.dtype
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """A lazy stream of the checkpoint's tensors; the path is checked now."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model path {model_path} does not exist")
    if os.path.isdir(model_path):
        return iterate_safetensors(model_path)
    if model_path.endswith(".gguf"):
        return iterate_gguf(model_path, hf_config, dtype)
    raise ValueError(f"{model_path} is neither a model folder nor a .gguf file")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
