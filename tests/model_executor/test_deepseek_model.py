"""Our DeepSeek V2/V3 (MLA) loaded through get_model give transformers' logits: without a cache
(latents expanded), and over the paged latent cache (chunked prefill, then absorbed decodes)."""
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from deepseek_models import VARIANTS
from test_model_with_kv_cache import metadata
from vllm.forward_context import set_forward_context
from vllm.model_executor.model_loader import get_model
from vllm.transformers_utils.config import get_hf_config

PROMPT = [1, 17, 42, 255, 3, 99, 128, 7, 64, 200, 5] * 4  # past yarn's original context
BLOCK_SIZE, NUM_BLOCKS = 4, 32


def load_ours(folder: str):
    return get_model(folder, get_hf_config(folder), torch.float32, "cpu")


def load_hf(folder: str):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.inference_mode()
def logits_without_cache(model, token_ids) -> torch.Tensor:
    return model.compute_logits(model(torch.tensor(token_ids),
                                      torch.arange(len(token_ids))))  # (T, vocab)


@torch.inference_mode()
def hf_logits(hf_model, token_ids) -> torch.Tensor:
    return hf_model(torch.tensor([token_ids])).logits[0].float()  # (T, vocab)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tiny_deepseek, variant):
    folder = tiny_deepseek(variant)
    ours = logits_without_cache(load_ours(folder), PROMPT)
    torch.testing.assert_close(ours, hf_logits(load_hf(folder), PROMPT), atol=1e-4, rtol=1e-4)


def latent_caches(model) -> dict[str, torch.Tensor]:
    config = model.config
    latent = config.kv_lora_rank + config.qk_rope_head_dim
    return {f"model.layers.{i}.self_attn.attn": torch.zeros(NUM_BLOCKS, BLOCK_SIZE, latent)
            for i in range(config.num_hidden_layers)}


@pytest.mark.parametrize("variant", ["v3", "v3_yarn", "v2", "v3_moe", "v2_moe"])
def test_paged_prefill_then_absorbed_decode_match_transformers(tiny_deepseek, variant):
    folder = tiny_deepseek(variant)
    model, hf_model = load_ours(folder), load_hf(folder)
    caches = latent_caches(model)
    seqs = [PROMPT[:13], PROMPT[20:27]]
    rows = [list(range(1, 9)), list(range(9, 17))]

    @torch.inference_mode()
    def step(tokens_per_seq, starts, query_lens):
        seq_lens = [start + n for start, n in zip(starts, query_lens)]
        ids = torch.tensor([t for seq in tokens_per_seq for t in seq])
        pos = torch.tensor([p for s, n in zip(starts, query_lens) for p in range(s, s + n)])
        with set_forward_context(metadata(query_lens, seq_lens, rows[:len(starts)]), caches):
            return model.compute_logits(model(ids, pos))

    # The first prompt in two chunks (the second reads the first's latents back), the
    # second prompt beside the second chunk, then decodes of both.
    step([seqs[0][:8]], [0], [8])
    step([seqs[0][8:], seqs[1]], [8, 0], [5, 7])
    for new_tokens in ([11, 12], [13, 14], [15, 16]):
        seqs = [seq + [token] for seq, token in zip(seqs, new_tokens)]
        logits = step([[s[-1]] for s in seqs], [len(s) - 1 for s in seqs], [1, 1])
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(logits[i], hf_logits(hf_model, seq)[-1],
                                       atol=1e-4, rtol=1e-4)


def test_cache_holds_the_latent(tiny_deepseek):
    """The cache row of a token is [kv_a_layernorm(kv_c), rotated k_pe]: kv_lora_rank +
    qk_rope_head_dim values, nothing per head."""
    model = load_ours(tiny_deepseek("v3"))
    caches = latent_caches(model)
    with torch.inference_mode(), set_forward_context(metadata([3], [3], [[5]]), caches):
        model(torch.tensor([4, 8, 15]), torch.arange(3))
    attn = model.model.layers[0].self_attn
    hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor([4])))
    kv_c = attn.kv_a_proj_with_mqa(hidden)[:, :attn.dims.kv_lora_rank]
    torch.testing.assert_close(caches["model.layers.0.self_attn.attn"][5, 0, :32],
                               attn.kv_a_layernorm(kv_c)[0])
    assert caches["model.layers.0.self_attn.attn"][6].abs().sum() == 0  # untouched block


def test_multi_token_prediction_weights_are_skipped(tmp_path, tiny_deepseek):
    import shutil
    folder = tmp_path / "with_mtp"
    shutil.copytree(tiny_deepseek("v3"), folder)
    reference = logits_without_cache(load_ours(str(folder)), PROMPT[:9])
    layers = get_hf_config(str(folder)).num_hidden_layers
    save_file({f"model.layers.{layers}.eh_proj.weight": torch.randn(64, 128),
               f"model.layers.{layers}.self_attn.kv_b_proj.weight": torch.randn(128, 32)},
              str(folder / "mtp.safetensors"))
    torch.testing.assert_close(logits_without_cache(load_ours(str(folder)), PROMPT[:9]),
                               reference)
    save_file({"model.layers.0.self_attn.bogus.weight": torch.randn(2, 2)},
              str(folder / "z_bogus.safetensors"))
    with pytest.raises(ValueError, match="unexpected weight 'model.layers.0.self_attn.bogus"):
        load_ours(str(folder))
