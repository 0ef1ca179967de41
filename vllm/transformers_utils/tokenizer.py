"""get_tokenizer: the Hugging Face tokenizer of a model folder or .gguf file."""
import functools
import os
from typing import Any

from transformers import AutoTokenizer

from vllm.transformers_utils.model_path import check_model_path, is_gguf_path, split_gguf_path


def get_tokenizer(model_or_tokenizer_path: str, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer of a folder or a .gguf file (GGUF tokenizers, with their
    chat template, are cached per path)."""
    path = model_or_tokenizer_path
    check_model_path(path, "tokenizer")
    if is_gguf_path(path):
        return _gguf_tokenizer(os.path.abspath(path), trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a tokenizer from {path}: {e}") from e


@functools.lru_cache(maxsize=8)
def _gguf_tokenizer(path: str, trust_remote_code: bool) -> Any:
    folder, name = split_gguf_path(path)
    try:
        return AutoTokenizer.from_pretrained(folder, gguf_file=name,
                                             trust_remote_code=trust_remote_code)
    except Exception as e:  # the GGUF reader raises several error types
        raise ValueError(f"cannot read the tokenizer of GGUF file {path}: {e}") from e
