"""Our Llama/Qwen2 loaded through get_model give Hugging Face's logits."""
import pytest
import torch

from vllm.model_executor.model_loader import get_model
from vllm.transformers_utils.config import get_hf_config

PROMPT = [1, 17, 42, 255, 3, 99, 128, 7, 64, 200, 5]


def our_logits(folder, token_ids) -> torch.Tensor:
    config = get_hf_config(str(folder))
    model = get_model(str(folder), config, torch.float32, "cpu")
    input_ids = torch.tensor(token_ids, dtype=torch.int64)
    positions = torch.arange(len(token_ids), dtype=torch.int64)
    with torch.inference_mode():
        return model.compute_logits(model(input_ids, positions))  # (T, vocab)


def hf_logits(hf_model, token_ids) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([token_ids])).logits[0].float()  # (T, vocab)


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_hf(tmp_path, tiny_config, save_hf_model, arch, tied):
    config = tiny_config(arch, tie_word_embeddings=tied)
    hf_model = save_hf_model(config, tmp_path)
    ours = our_logits(tmp_path, PROMPT)
    assert ours.dtype == torch.float32 and ours.shape == (len(PROMPT), 256)
    torch.testing.assert_close(ours, hf_logits(hf_model, PROMPT), atol=1e-4, rtol=1e-4)


def test_sharded_safetensors(tmp_path, tiny_config, save_hf_model):
    config = tiny_config("LlamaForCausalLM")
    hf_model = save_hf_model(config, tmp_path, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    torch.testing.assert_close(our_logits(tmp_path, PROMPT), hf_logits(hf_model, PROMPT),
                               atol=1e-4, rtol=1e-4)


def test_llama3_rope_and_attention_bias(tmp_path, tiny_config, save_hf_model):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    config = tiny_config("LlamaForCausalLM", rope_parameters=rope, attention_bias=True,
                         mlp_bias=True, num_key_value_heads=1, head_dim=32)
    hf_model = save_hf_model(config, tmp_path)
    prompt = PROMPT * 4  # past original_max_position_embeddings
    torch.testing.assert_close(our_logits(tmp_path, prompt), hf_logits(hf_model, prompt),
                               atol=1e-4, rtol=1e-4)


def test_model_is_eval_without_grad(tmp_path, tiny_config, save_hf_model):
    config = tiny_config("LlamaForCausalLM")
    save_hf_model(config, tmp_path)
    model = get_model(str(tmp_path), get_hf_config(str(tmp_path)), torch.float32, "cpu")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
