"""A GGUF file converted once into a safetensors folder, so later starts take seconds.

Dequantising a GGUF file and parsing its config and tokenizer costs ~15 s per start; the
converted folder (config.json, tokenizer files, model.safetensors in the model's dtype of
float32, and gguf_blocks/blocks.safetensors with the file's Q4_1 / Q8_0 blocks for the
small-batch kernel) loads in about one. Set VLLM_GGUF_CACHE=0 to read the GGUF file every time.
"""
import hashlib
import os
import shutil
import tempfile

from vllm.logger import init_logger
from vllm.transformers_utils.model_path import is_gguf_path

logger = init_logger(__name__)
_FORMAT_VERSION = "3"  # 3: with the GGUF blocks beside the float32 weights
_DONE_MARKER = "conversion-complete"


def cache_root() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "vllm-pd", "gguf")
    return os.environ.get("VLLM_GGUF_CACHE_DIR", default)


def cache_enabled() -> bool:
    return os.environ.get("VLLM_GGUF_CACHE", "1") != "0"


def cache_key(path: str) -> str:
    stat = os.stat(path)
    identity = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{_FORMAT_VERSION}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def resolve_model_source(path: str) -> str:
    """The folder to load `path` from: a converted copy for a .gguf file, else `path`."""
    if not cache_enabled() or not is_gguf_path(path):
        return path
    folder = os.path.join(cache_root(), cache_key(path))
    if os.path.isfile(os.path.join(folder, _DONE_MARKER)):
        return folder
    try:
        _convert(path, folder)
    except OSError as error:  # read-only home, full disk: fall back to the file itself
        logger.warning("cannot cache the GGUF conversion of %s (%s); reading it directly",
                       path, error)
        return path
    return folder


def _convert(path: str, folder: str) -> None:
    from safetensors.torch import save_file

    from vllm.model_executor.model_loader.gguf_block_weights import (
        extract_gguf_blocks, save_gguf_blocks)
    from vllm.model_executor.model_loader.gguf_weights import iterate_gguf
    from vllm.transformers_utils.config import get_hf_config
    from vllm.transformers_utils.tokenizer import get_tokenizer
    import torch
    logger.info("converting %s into %s (once)", path, folder)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(folder))
    try:
        config = get_hf_config(path)
        config.save_pretrained(staging)
        get_tokenizer(path).save_pretrained(staging)
        tensors = {name: tensor.contiguous()
                   for name, tensor in iterate_gguf(path, config, torch.float32)}
        save_gguf_blocks(staging, extract_gguf_blocks(path, tensors))
        save_file(tensors, os.path.join(staging, "model.safetensors"))
        open(os.path.join(staging, _DONE_MARKER), "w").close()
        os.rename(staging, folder)
    except OSError:
        if not os.path.isfile(os.path.join(folder, _DONE_MARKER)):
            raise  # another process did not win the race: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
