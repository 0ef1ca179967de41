"""Save a DeepSeek-V3-shaped model with random weights (save_pretrained) and the demo model's
tokenizer, for benchmark_throughput.py; prints its parameter counts and KV bytes per token.

    python benchmarks/make_deepseek_random.py /tmp/deepseek-random
    python benchmarks/benchmark_throughput.py --model /tmp/deepseek-random --compare-hf \\
        --num-prompts 64 --input-len 256 --output-len 128
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# MLA as DeepSeek-R1 lays it out at a smaller scale (q/kv low-rank, 64 + 32 query/key
# channels per head, values of 64), one dense layer, then MoE with grouped routing.
SHAPE = dict(vocab_size=49152, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=8, q_lora_rank=256, kv_lora_rank=128,
             qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
             max_position_embeddings=4096, first_k_dense_replace=1, n_routed_experts=32,
             num_experts_per_tok=4, moe_intermediate_size=256, n_shared_experts=1, n_group=4,
             topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
             rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                              "original_max_position_embeddings": 1024, "beta_fast": 32.0,
                              "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
             tie_word_embeddings=False, initializer_range=0.02)


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    config = model.config
    active_experts = experts * config.num_experts_per_tok // config.n_routed_experts
    return {"total": total, "active_per_token": total - experts + active_experts}


def kv_bytes_per_token(config, element_size: int = 4) -> dict[str, int]:
    """The latent cache against caching every head's key and value, as the same heads would
    without MLA (vllm/kv_shape.py)."""
    from vllm import kv_shape
    per_value = config.num_hidden_layers * element_size
    return {"mla": per_value * kv_shape.cache_elements_per_token(config),
            "mha_equivalent": per_value * kv_shape.expanded_elements_per_token(config)}


def main() -> None:
    import torch
    from transformers import AutoTokenizer, DeepseekV3Config, DeepseekV3ForCausalLM

    from vllm.demo_model import demo_model_path
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    demo = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(demo),
                                              gguf_file=os.path.basename(demo))
    config = DeepseekV3Config(**SHAPE, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id,
                              architectures=["DeepseekV3ForCausalLM"])
    torch.manual_seed(args.seed)
    model = DeepseekV3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"folder": args.out, "parameters": parameter_counts(model),
                      "kv_bytes_per_token_float32": kv_bytes_per_token(config)}, indent=2))


if __name__ == "__main__":
    main()
