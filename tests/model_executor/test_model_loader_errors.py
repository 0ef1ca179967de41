"""Clear errors for bad paths, bad files, unknown architectures and bad weights."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm.model_executor.model_loader import get_model
from vllm.model_executor.models.registry import resolve_model_cls, supported_architectures
from vllm.transformers_utils.config import get_hf_config
from vllm.transformers_utils.tokenizer import get_tokenizer


@pytest.fixture
def llama_folder(tmp_path, tiny_config, save_hf_model):
    save_hf_model(tiny_config("LlamaForCausalLM"), tmp_path)
    return tmp_path


def load(folder):
    return get_model(str(folder), get_hf_config(str(folder)), torch.float32, "cpu")


def test_registry_resolves_and_rejects():
    from vllm.model_executor.models.llama import LlamaForCausalLM, MistralForCausalLM
    assert resolve_model_cls(["LlamaForCausalLM"]) is LlamaForCausalLM
    assert resolve_model_cls(["Nope", "MistralForCausalLM"]) is MistralForCausalLM
    assert {"Qwen2ForCausalLM", "DeepseekV3ForCausalLM"} <= set(supported_architectures())
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: Deepseek.*LlamaForCausalLM"):
        resolve_model_cls(["GPT2LMHeadModel"])


def test_unknown_architecture_in_get_model(llama_folder):
    config = get_hf_config(str(llama_folder))
    config.architectures = ["FancyForCausalLM"]
    with pytest.raises(ValueError, match="FancyForCausalLM"):
        get_model(str(llama_folder), config, torch.float32, "cpu")


def test_missing_paths(tmp_path, tiny_config):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_hf_config(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        get_hf_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_model(missing, tiny_config("LlamaForCausalLM"), torch.float32, "cpu")


def test_folder_without_weights(llama_folder):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"no \\*.safetensors weights in {llama_folder}"):
        load(llama_folder)


def test_truncated_safetensors(llama_folder):
    weights = llama_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match="model.safetensors"):
        load(llama_folder)


def test_index_naming_a_missing_shard(llama_folder):
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (llama_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load(llama_folder)


def test_missing_weight(llama_folder):
    path = llama_folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing 1 weight.*layers.1.self_attn.v_proj.weight"):
        load(llama_folder)


def test_unexpected_weight(llama_folder):
    path = llama_folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected weight 'model.layers.0.self_attn.extra"):
        load(llama_folder)


def test_wrong_weight_shape(llama_folder):
    path = llama_folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="gate_up_proj.*\\(100, 64\\)"):
        load(llama_folder)


def test_bad_gguf_magic(tmp_path, tiny_config):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="fake.gguf"):
        get_model(str(fake), tiny_config("LlamaForCausalLM"), torch.float32, "cpu")
    with pytest.raises(ValueError, match="fake.gguf"):
        get_hf_config(str(fake))


def test_bad_dtype(llama_folder):
    with pytest.raises(ValueError, match="dtype"):
        get_model(str(llama_folder), get_hf_config(str(llama_folder)), torch.int32, "cpu")
