"""get_hf_config: the Hugging Face config of a model folder or .gguf file."""
import functools
import os
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from vllm.transformers_utils.model_path import check_model_path, is_gguf_path, split_gguf_path


def get_hf_config(model: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """Load the config of `model` (a folder with config.json, or a .gguf file).

    `architectures` is filled from `model_type` when the source lacks it (GGUF).
    GGUF configs are cached per path, since parsing the file takes seconds.
    """
    check_model_path(model, "model")
    if is_gguf_path(model):
        return _gguf_config(os.path.abspath(model), trust_remote_code)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"model folder {model} has no config.json")
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load the config of {model}: {e}") from e
    return _with_architectures(config)


@functools.lru_cache(maxsize=8)
def _gguf_config(path: str, trust_remote_code: bool) -> PretrainedConfig:
    folder, name = split_gguf_path(path)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name,
                                            trust_remote_code=trust_remote_code)
    except Exception as e:  # the GGUF reader raises several error types
        raise ValueError(f"cannot read the config of GGUF file {path}: {e}") from e
    return _with_architectures(config)


def _with_architectures(config: Any) -> Any:
    if not getattr(config, "architectures", None):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        if arch is not None:
            config.architectures = [arch]
    return config
