"""Tiny random DeepSeek V2/V3 checkpoints made by transformers' own classes (save_pretrained),
the independent reference of the MLA tests."""
import torch

# 4 heads of 16 + 8 (no-rope + rope) query/key channels, values of 16, a latent of 32.
TINY_MLA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=48,
                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.2,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                norm_topk_prob=True)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 0.7}
DENSE = {"first_k_dense_replace": TINY_MLA["num_hidden_layers"]}

# name -> (architecture, config overrides)
VARIANTS = {
    "v3": ("v3", dict(DENSE)),
    "v3_no_q_lora": ("v3", dict(DENSE, q_lora_rank=None)),
    "v3_yarn": ("v3", dict(DENSE, rope_parameters=YARN)),
    "v3_rope_halves": ("v3", dict(DENSE, rope_interleave=False)),
    "v2": ("v2", dict(DENSE, q_lora_rank=None, norm_topk_prob=False)),
    # 3 heads: over 2 ranks they split 2 + 1
    "v3_3heads": ("v3", dict(DENSE, hidden_size=48, num_attention_heads=3,
                             num_key_value_heads=3)),
    # MoE: 8 experts in 4 groups, 2 groups and 2 experts per token, one shared expert
    "v3_moe": ("v3", dict(first_k_dense_replace=1)),
    "v3_moe_all_yarn": ("v3", dict(first_k_dense_replace=0, q_lora_rank=None,
                                   rope_parameters=YARN)),
    "v2_moe": ("v2", dict(first_k_dense_replace=1, q_lora_rank=None, norm_topk_prob=False,
                          topk_method="group_limited_greedy")),
    "v2_moe_greedy": ("v2", dict(first_k_dense_replace=0, norm_topk_prob=False, n_group=None,
                                 topk_group=None)),
    # 16 experts: a token's router row fills PyTorch's vector loop alone as in a batch (the
    # sigmoid of an 8-wide row takes its scalar path alone, whose last bit may differ)
    "v3_moe16": ("v3", dict(first_k_dense_replace=1, n_routed_experts=16)),
}


def deepseek_classes(arch: str):
    from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config,
                              DeepseekV3ForCausalLM)
    return {"v2": (DeepseekV2Config, DeepseekV2ForCausalLM),
            "v3": (DeepseekV3Config, DeepseekV3ForCausalLM)}[arch]


def make_deepseek_config(arch: str, **overrides):
    config_cls, model_cls = deepseek_classes(arch)
    return config_cls(**{**TINY_MLA, "architectures": [model_cls.__name__], **overrides})


def make_deepseek(folder: str, arch: str = "v3", seed: int = 0, **overrides):
    """Save a random tiny DeepSeek of `arch` ("v2" or "v3") into `folder`; returns the
    transformers model (float32, eval)."""
    _, model_cls = deepseek_classes(arch)
    config = make_deepseek_config(arch, **overrides)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # zeros by default: make it count
                buffer.copy_(0.1 * torch.randn(buffer.shape))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def make_variant(folder: str, name: str, seed: int = 0):
    arch, overrides = VARIANTS[name]
    return make_deepseek(folder, arch, seed, **overrides)
