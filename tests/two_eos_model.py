"""A Qwen2.5-Instruct-style generation config for a tiny model: two eos ids (config.json
names only the first), greedy by default, five new tokens unless a request says otherwise."""
import json
import os

SECOND_EOS = 7
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": [2, SECOND_EOS], "temperature": 0.0,
                     "top_p": 0.9, "repetition_penalty": 1.05, "max_new_tokens": 5}
# What a request gets from it besides the eos ids, as SamplingParams fields.
SAMPLING_DEFAULTS = {"temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.05}
DEFAULT_MAX_TOKENS = 5
PROMPT = [10, 11, 12, 13]
FORCE_SECOND_EOS = {SECOND_EOS: 100.0}


def write_generation_config(folder: str) -> None:
    with open(os.path.join(folder, "generation_config.json"), "w") as handle:
        json.dump(GENERATION_CONFIG, handle)
