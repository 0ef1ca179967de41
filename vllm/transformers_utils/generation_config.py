"""The model's generation_config.json: its eos ids and default sampling parameters."""
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm.config import ConfigError, read_json_object

GENERATION_CONFIG_FILE = "generation_config.json"
GENERATION_CONFIG_AUTO = "auto"  # the model folder's file, when it has one
GENERATION_CONFIG_VLLM = "vllm"  # ignore the file: vLLM's own defaults
# generation_config.json key -> SamplingParams field it gives a default to
SAMPLING_DEFAULT_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                         "min_p": "min_p", "repetition_penalty": "repetition_penalty"}
MAX_TOKENS_KEY = "max_new_tokens"


@dataclass(frozen=True)
class GenerationDefaults:
    """What a model's generation config says about requests that do not say it themselves."""

    eos_token_ids: tuple[int, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams keyword args
    max_tokens: Optional[int] = None


def read_generation_config(setting: str, model_folder: str) -> dict[str, Any]:
    """The generation config `--generation-config` names: auto, vllm or a folder."""
    if setting == GENERATION_CONFIG_VLLM:
        return {}
    if setting == GENERATION_CONFIG_AUTO:
        path = os.path.join(model_folder, GENERATION_CONFIG_FILE)
        return read_json_object(path, "generation_config") if os.path.isfile(path) else {}
    if not isinstance(setting, str) or not os.path.isdir(setting):
        raise ConfigError(f"generation_config must be {GENERATION_CONFIG_AUTO!r}, "
                          f"{GENERATION_CONFIG_VLLM!r} or a folder holding "
                          f"{GENERATION_CONFIG_FILE}, got {setting!r}")
    path = os.path.join(setting, GENERATION_CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"generation_config folder {setting} has no {GENERATION_CONFIG_FILE}")
    return read_json_object(path, "generation_config")


def generation_defaults(generation_config: dict[str, Any],
                        model_eos: Any) -> GenerationDefaults:
    """Eos ids of config.json then of the generation config (each may be an int or a list);
    its sampling defaults, checked as SamplingParams would check a request's."""
    eos = _eos_list(model_eos) + _eos_list(generation_config.get("eos_token_id"))
    sampling = {name: generation_config[key] for key, name in SAMPLING_DEFAULT_KEYS.items()
                if generation_config.get(key) is not None}
    max_tokens = generation_config.get(MAX_TOKENS_KEY)
    _check_sampling(sampling, max_tokens)
    return GenerationDefaults(tuple(dict.fromkeys(eos)), sampling, max_tokens)


def _eos_list(value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)
           for v in values):
        raise ConfigError(f"generation_config: eos_token_id must be a token id or a list of "
                          f"them, got {value!r}")
    return [v for v in values if v is not None]


def _check_sampling(sampling: dict[str, Any], max_tokens: Any) -> None:
    from vllm.sampling_params import SamplingParams
    try:
        SamplingParams(**sampling, max_tokens=max_tokens)
    except ValueError as error:
        message = str(error).replace("max_tokens", MAX_TOKENS_KEY)
        raise ConfigError(f"generation_config: {message}") from None
