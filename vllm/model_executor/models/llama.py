"""Llama decoder-only transformer (also serves Mistral and, with biases, Qwen2)."""
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

from vllm import kv_shape
from vllm.attention.layer import Attention
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear)
from vllm.model_executor.layers.rotary_embedding import (
    RotaryEmbedding, get_rope, rope_parameters_from_config)
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead, VocabParallelEmbedding)
from vllm.model_executor.models.weight_mapping import LLAMA_STACKED_PARAMS, load_named_weights

CosSin = tuple[torch.Tensor, torch.Tensor]


def join_prefix(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class LlamaMLP(nn.Module):

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str,
                 bias: bool, prefix: str):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r}; only 'silu' is supported")
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size] * 2, bias, prefix=join_prefix(prefix, "gate_up_proj"))
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias,
                                           prefix=join_prefix(prefix, "down_proj"))
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # (T, 2 * intermediate / tp)
        return self.down_proj(self.act_fn(gate_up))  # (T, hidden)


class LlamaAttention(nn.Module):

    def __init__(self, config: Any, qkv_bias: bool, o_proj_bias: bool, prefix: str):
        super().__init__()
        self.head_dim = kv_shape.head_size(config)
        total_heads = config.num_attention_heads
        total_kv_heads = kv_shape.num_kv_heads(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads,
                                          total_kv_heads, qkv_bias,
                                          prefix=join_prefix(prefix, "qkv_proj"))
        num_heads, num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = num_heads * self.head_dim
        self.kv_size = num_kv_heads * self.head_dim
        heads = self.qkv_proj.heads
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size,
                                        o_proj_bias, prefix=join_prefix(prefix, "o_proj"),
                                        input_partition=(heads.q_start * self.head_dim,
                                                         self.q_size))
        self.attn = Attention(num_heads, self.head_dim, self.head_dim ** -0.5, num_kv_heads,
                              prefix=join_prefix(prefix, "attn"))

    def forward(self, hidden: torch.Tensor, rotary_emb: RotaryEmbedding,
                cos_sin: CosSin) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)  # (T, q_size + 2 * kv_size)
        # q and k heads sit side by side in qkv: rotate them with one set of ops
        rotary_emb.rotate_(qkv[:, :self.q_size + self.kv_size], cos_sin)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v))  # (T, hidden)


class PreNormDecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(...)); the residual add is fused into the norms."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor],
                rotary_emb: RotaryEmbedding, cos_sin: CosSin
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, rotary_emb, cos_sin)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


def llama_decoder_layer(config: Any, biases: tuple[bool, bool, bool],
                        prefix: str) -> PreNormDecoderLayer:
    qkv_bias, o_proj_bias, mlp_bias = biases
    self_attn = LlamaAttention(config, qkv_bias, o_proj_bias,
                               prefix=join_prefix(prefix, "self_attn"))
    mlp = LlamaMLP(config.hidden_size, config.intermediate_size,
                   getattr(config, "hidden_act", "silu"), mlp_bias,
                   prefix=join_prefix(prefix, "mlp"))
    return PreNormDecoderLayer(self_attn, mlp, config.hidden_size, config.rms_norm_eps)


class LlamaModel(nn.Module):
    """Embedding, `make_layer(index, prefix)` per layer, final norm; one rotary table of
    `rope_size` channels shared by all layers."""

    def __init__(self, config: Any, prefix: str,
                 make_layer: Callable[[int, str], nn.Module], rope_size: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=join_prefix(prefix, "embed_tokens"))
        self.layers = nn.ModuleList(
            make_layer(i, join_prefix(prefix, f"layers.{i}"))
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # One table for all layers: angles are looked up once per forward.
        self.rotary_emb = get_rope(rope_size, config.max_position_embeddings,
                                   rope_parameters_from_config(config))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (T, hidden)
        cos_sin = self.rotary_emb.cos_sin(positions)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, self.rotary_emb, cos_sin)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Causal LM: `forward(input_ids (T,), positions (T,)) -> hidden (T, hidden_size)`,
    `compute_logits(hidden (N, hidden_size)) -> (N, vocab_size)` float32, and
    `load_weights` taking Hugging Face parameter names."""
    # Checkpoint projections loaded as shards of one fused parameter (weight_mapping.py).
    stacked_params = LLAMA_STACKED_PARAMS

    def __init__(self, hf_config: Any, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        self.model = self.make_model(hf_config, join_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size,
                                      prefix=join_prefix(prefix, "lm_head"))
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie_weights(self.model.embed_tokens)

    def make_model(self, config: Any, prefix: str) -> nn.Module:
        biases = self.layer_biases(config)
        return LlamaModel(config, prefix, lambda i, p: llama_decoder_layer(config, biases, p),
                          kv_shape.head_size(config))

    @staticmethod
    def layer_biases(config: Any) -> tuple[bool, bool, bool]:
        """(qkv_proj, o_proj, mlp) bias flags."""
        attention_bias = bool(getattr(config, "attention_bias", False))
        return attention_bias, attention_bias, bool(getattr(config, "mlp_bias", False))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip_prefixes = ("lm_head.",) if self.tie_word_embeddings else ()
        return load_named_weights(self, weights, self.stacked_params,
                                  skip_prefixes=skip_prefixes)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral shares Llama's layout (sliding-window attention is not applied)."""
