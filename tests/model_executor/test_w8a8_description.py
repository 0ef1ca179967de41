"""quant_model_description.json at start-up: detected without --quantization, required
with it, and every malformed description or checkpoint stops start-up with one line
naming the tensor."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm import LLM
from vllm.config import ConfigError
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.layers.quantization.ascend_format import (
    DESCRIPTION_FILE, WEIGHT_FILES)

from w8a8_reference import quantize_with_cli

LAYER = "model.layers.0.mlp.down_proj"


@pytest.fixture(scope="module")
def quantized(tiny_model_dirs, demo_model_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("w8a8") / "llama")
    return quantize_with_cli(tiny_model_dirs["llama"], out, "W8A8_DYNAMIC", demo_model_dir)


@pytest.fixture
def broken(quantized, tmp_path):
    """broken(edit_description, edit_tensors) -> a copy of the quantized folder, edited."""
    def make(describe=None, tensors=None) -> str:
        folder = str(tmp_path / "broken")
        shutil.copytree(quantized, folder)
        weights = os.path.join(folder, WEIGHT_FILES["W8A8_DYNAMIC"])
        if tensors is not None:
            state = load_file(weights)
            tensors(state)
            save_file(state, weights)
        if describe is not None:
            path = os.path.join(folder, DESCRIPTION_FILE)
            with open(path) as handle:
                description = json.load(handle)
            describe(description)
            with open(path, "w") as handle:
                json.dump(description, handle)
        return folder
    return make


def start(folder: str, **kwargs):
    return EngineArgs(model=folder, **kwargs).create_engine_config()


def test_the_description_is_detected_and_checked(quantized):
    assert start(quantized).model_config.quantization == "ascend"
    assert start(quantized, quantization="ascend").model_config.quantization == "ascend"


def test_ascend_without_a_description_and_other_methods_are_refused(tiny_model_dirs, quantized):
    with pytest.raises(ConfigError, match=f"needs {DESCRIPTION_FILE}"):
        start(tiny_model_dirs["llama"], quantization="ascend")
    with pytest.raises(ConfigError, match="quantization must be 'ascend'"):
        start(quantized, quantization="gptq")
    assert start(tiny_model_dirs["llama"]).model_config.quantization is None


MALFORMED = {
    "a scale missing": (lambda d: d.pop(f"{LAYER}.weight_scale"),
                        lambda t: t.pop(f"{LAYER}.weight_scale"),
                        f"{LAYER}.weight_scale: missing from the checkpoint"),
    "a scale of the wrong shape": (None, lambda t: t.update({f"{LAYER}.weight_scale":
                                                              torch.ones(5, 1)}),
                                   rf"{LAYER}.weight_scale: shape \(5, 1\) should be \(64,\)"),
    "an unknown method": (lambda d: d.update({f"{LAYER}.weight": "W4A8_DYNAMIC"}), None,
                          f"{LAYER}.weight: unknown method 'W4A8_DYNAMIC'"),
    "a tensor the checkpoint lacks": (lambda d: d.update({"model.extra.weight": "FLOAT"}), None,
                                      "names model.extra.weight, which the checkpoint"),
    "an int8 weight called FLOAT": (lambda d: d.update({f"{LAYER}.weight": "FLOAT"}), None,
                                    f"{LAYER}.weight is int8 in the checkpoint"),
    "a float weight called W8A8": (None, lambda t: t.update({f"{LAYER}.weight":
                                                              torch.zeros(64, 128)}),
                                   f"{LAYER}.weight: a W8A8_DYNAMIC weight is int8"),
    "a static layer without deq_scale": (lambda d: d.update({f"{LAYER}.weight": "W8A8"}), None,
                                         f"{LAYER}.input_scale: missing from the checkpoint"),
    "KV-cache quantization": (lambda d: d.update({"kv_quant_type": "C8"}), None,
                              "kv_quant_type .* is not supported"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoints_stop_start_up_naming_the_tensor(broken, case):
    describe, tensors, message = MALFORMED[case]
    with pytest.raises(ConfigError, match=message):
        start(broken(describe, tensors))


@pytest.mark.parametrize("text, message", [("{oops", "cannot read"),
                                           ('["W8A8"]', "must hold a JSON object")])
def test_a_description_that_is_not_a_json_object_is_refused(broken, text, message):
    folder = broken()
    with open(os.path.join(folder, DESCRIPTION_FILE), "w") as handle:
        handle.write(text)
    with pytest.raises(ConfigError, match=f"{DESCRIPTION_FILE}: .*{message}"):
        start(folder)


@pytest.mark.parametrize("skip, message", [
    ("", "lm_head.weight: W8A8_DYNAMIC is not supported for this layer"),
    ("lm_head,layers.0.self_attn.q_proj",
     "parts of model.layers.0.self_attn.qkv_proj must share one method")])
def test_layers_the_engine_cannot_load_are_named(tiny_model_dirs, demo_model_dir, tmp_path,
                                                 skip, message):
    """A quantized LM head; q_proj FLOAT beside an int8 k_proj and v_proj."""
    folder = quantize_with_cli(tiny_model_dirs["llama"], str(tmp_path / "w8a8"), "W8A8_DYNAMIC",
                               demo_model_dir, skip=skip)
    with pytest.raises(ValueError, match=message):
        LLM(folder, tokenizer=demo_model_dir, max_model_len=64, num_gpu_blocks_override=8)


def test_vllm_quantize_command_line(tiny_model_dirs, demo_model_dir, tmp_path):
    """The console entry end to end: a folder in the format, and bad input in one line."""
    out = str(tmp_path / "cli")
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "quantize"]
    done = subprocess.run(command + [tiny_model_dirs["llama"], out], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == out
    with open(os.path.join(out, DESCRIPTION_FILE)) as handle:
        description = json.load(handle)
    assert description["model_quant_type"] == "W8A8_DYNAMIC"
    assert description["lm_head.weight"] == "FLOAT"
    assert description[f"{LAYER}.weight_scale"] == "W8A8_DYNAMIC"
    assert os.path.isfile(os.path.join(out, "config.json"))
    again = subprocess.run(command + [tiny_model_dirs["llama"], out], capture_output=True,
                           text=True, timeout=120)
    static = subprocess.run(command + [tiny_model_dirs["llama"], str(tmp_path / "static"),
                                       "--method", "W8A8"],
                            capture_output=True, text=True, timeout=120)
    for refused, why in ((again, "exists already"), (static, "--calib-prompt")):
        assert refused.returncode == 2
        errors = [line for line in refused.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and why in errors[0], refused.stderr
