"""DeepSeek V2/V3: multi-head latent attention over a latent KV cache, mixture-of-experts MLPs
after the first `first_k_dense_replace` dense layers."""
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vllm import kv_shape
from vllm.attention.backend import MLADims
from vllm.attention.layer import MLAAttention
from vllm.model_executor.layers.fused_moe import (
    ExpertWeightLoader, FusedMoE, Routing, check_experts_loaded, expert_params_mapping,
    routing_kwargs_from_config)
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    HeadParallelLinear, ReplicatedLinear, RowParallelLinear)
from vllm.model_executor.layers.rotary_embedding import (
    RotaryEmbedding, rope_frequencies, rope_parameters_from_config, yarn_mscale)
from vllm.model_executor.models.llama import (
    CosSin, LlamaForCausalLM, LlamaMLP, LlamaModel, PreNormDecoderLayer, join_prefix)
from vllm.model_executor.models.weight_mapping import MLP_STACKED_PARAMS, load_named_weights

# transformers builds q_a_layernorm and kv_a_layernorm with RMSNorm's default eps.
LATENT_NORM_EPS = 1e-6
_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")
# The checkpoint keeps the score correction bias with the router; FusedMoE holds it.
ROUTER_BIAS = ".mlp.gate.e_score_correction_bias"
EXPERTS_BIAS = ".mlp.experts.e_score_correction_bias"
EXPERT_WEIGHTS = ("experts.w13_weight", "experts.w2_weight")  # loaded by ExpertWeightLoader


def mla_softmax_scale(config: Any) -> float:
    """1 / sqrt(qk_head_dim), times YaRN's mscale(factor, mscale_all_dim) squared when the
    rope is scaled: DeepSeek scales every q.k term, not only the rotated part."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    params = rope_parameters_from_config(config)
    if params["rope_type"] != "default" and params.get("mscale_all_dim"):
        scale *= yarn_mscale(float(params["factor"]), float(params["mscale_all_dim"])) ** 2
    return scale


class DeepseekV2MLAAttention(nn.Module):
    """Queries from the hidden state (directly, or through the q_a/q_b low-rank pair), one
    latent per token (kv_a_proj_with_mqa: the normalised kv_c and the shared rotated key
    part), attention over the latents by the backend, then o_proj. Query heads and kv_b_proj
    are split by head over tensor-parallel ranks, the latent is replicated."""

    def __init__(self, config: Any, prefix: str):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        nope, rope, v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        latent_rank = config.kv_lora_rank
        bias = bool(getattr(config, "attention_bias", False))
        self.q_lora_rank = config.q_lora_rank
        if self.q_lora_rank:
            self.q_a_proj = ReplicatedLinear(hidden, self.q_lora_rank, bias,
                                             prefix=join_prefix(prefix, "q_a_proj"))
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = HeadParallelLinear(self.q_lora_rank, heads, nope + rope,
                                               prefix=join_prefix(prefix, "q_b_proj"))
        else:
            self.q_proj = HeadParallelLinear(hidden, heads, nope + rope,
                                             prefix=join_prefix(prefix, "q_proj"))
        self.kv_a_proj_with_mqa = ReplicatedLinear(
            hidden, latent_rank + rope, bias, prefix=join_prefix(prefix, "kv_a_proj_with_mqa"))
        self.kv_a_layernorm = RMSNorm(latent_rank, LATENT_NORM_EPS)
        self.kv_b_proj = HeadParallelLinear(latent_rank, heads, nope + v_dim,
                                            prefix=join_prefix(prefix, "kv_b_proj"))
        shard = self.kv_b_proj.heads
        self.o_proj = RowParallelLinear(heads * v_dim, hidden, bias,
                                        prefix=join_prefix(prefix, "o_proj"),
                                        input_partition=(shard.q_start * v_dim,
                                                         shard.q_count * v_dim))
        self.dims = MLADims(shard.q_count, latent_rank, nope, rope, v_dim)
        # DeepSeek's rotary channels are interleaved pairs (V3 may say otherwise).
        self.rope_interleaved = bool(getattr(config, "rope_interleave", True))
        self.mla_attn = MLAAttention(self.dims, mla_softmax_scale(config), self.kv_b_proj,
                                     prefix=join_prefix(prefix, "attn"))

    def forward(self, hidden: torch.Tensor, rotary_emb: RotaryEmbedding,
                cos_sin: CosSin) -> torch.Tensor:
        dims, num_tokens = self.dims, hidden.shape[0]
        if self.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))  # (T, H * qk)
        else:
            q = self.q_proj(hidden)  # (T, H * qk)
        q_nope, q_pe = q.view(num_tokens, dims.num_heads, dims.qk_head_dim).split(
            [dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1)
        q_pe = rotary_emb.rotated(q_pe, cos_sin, self.rope_interleaved)  # (T, H, rope)
        latent = self.kv_a_proj_with_mqa(hidden)  # (T, kv_lora_rank + rope)
        kv_c, k_pe = latent.split([dims.kv_lora_rank, dims.qk_rope_head_dim], dim=-1)
        kv_c_normed = self.kv_a_layernorm(kv_c)  # (T, kv_lora_rank)
        k_pe = rotary_emb.rotated(k_pe.unsqueeze(1), cos_sin, self.rope_interleaved)
        out = self.mla_attn(torch.cat([q_nope, q_pe], dim=-1), kv_c_normed,
                            k_pe.squeeze(1))  # (T, H * v)
        return self.o_proj(out)  # (T, hidden)


class DeepseekV2MoE(nn.Module):
    """Routed experts (FusedMoE: routing, experts, scaling) plus the shared experts, a dense
    MLP of n_shared_experts * moe_intermediate_size. The router is a float32 linear layer
    replicated on every rank."""

    def __init__(self, config: Any, prefix: str):
        super().__init__()
        hidden, num_experts = config.hidden_size, config.n_routed_experts
        self.gate = ReplicatedLinear(hidden, num_experts, bias=False,
                                     prefix=join_prefix(prefix, "gate"),
                                     params_dtype=torch.float32)
        self.experts = FusedMoE(
            num_experts, config.num_experts_per_tok, hidden, config.moe_intermediate_size,
            reduce_results=True, prefix=join_prefix(prefix, "experts"),
            **routing_kwargs_from_config(config))
        num_shared = getattr(config, "n_shared_experts", None) or 0
        self.shared_experts = LlamaMLP(
            hidden, num_shared * config.moe_intermediate_size, config.hidden_act, False,
            prefix=join_prefix(prefix, "shared_experts")) if num_shared else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        router_logits = self.gate(hidden.float())  # (T, num_experts) float32
        out = self.experts(hidden, router_logits)  # (T, hidden)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden)
        return out


def is_moe_layer(config: Any, index: int) -> bool:
    return bool(getattr(config, "n_routed_experts", None)) and \
        index >= (getattr(config, "first_k_dense_replace", None) or 0)


def is_mtp_weight(name: str, num_hidden_layers: int) -> bool:
    """Multi-token-prediction modules sit after the last layer (model.layers.{N}.*)."""
    match = _LAYER_INDEX.match(name)
    return match is not None and int(match.group(1)) >= num_hidden_layers


class DeepseekV2ForCausalLM(LlamaForCausalLM):
    """DeepSeek-V2 (softmax routing, greedy or group-limited top-k); the interface of
    LlamaForCausalLM, loading the checkpoint's own names (per-expert mlp.experts.N.*) and
    skipping the multi-token-prediction layers."""
    stacked_params = MLP_STACKED_PARAMS

    @staticmethod
    def check_config(config: Any) -> None:
        """ValueError naming the first field of `config` this model cannot serve."""
        kv_shape.check_mla_fields(config)
        rope_frequencies(rope_parameters_from_config(config), config.qk_rope_head_dim,
                         config.max_position_embeddings)
        if getattr(config, "moe_layer_freq", 1) != 1:
            raise ValueError(f"moe_layer_freq={config.moe_layer_freq} is not supported "
                             "(every layer after first_k_dense_replace is MoE)")
        if any(is_moe_layer(config, i) for i in range(config.num_hidden_layers)):
            routing = routing_kwargs_from_config(config)
            routing.pop("has_score_correction_bias")
            Routing(config.n_routed_experts, config.num_experts_per_tok, **routing)

    def make_model(self, config: Any, prefix: str) -> nn.Module:
        self.check_config(config)
        return LlamaModel(config, prefix, lambda i, p: self.make_layer(config, i, p),
                          config.qk_rope_head_dim)

    def make_layer(self, config: Any, index: int, prefix: str) -> PreNormDecoderLayer:
        self_attn = DeepseekV2MLAAttention(config, join_prefix(prefix, "self_attn"))
        if is_moe_layer(config, index):
            mlp = DeepseekV2MoE(config, join_prefix(prefix, "mlp"))
        else:
            mlp = LlamaMLP(config.hidden_size, config.intermediate_size,
                           getattr(config, "hidden_act", "silu"),
                           bool(getattr(config, "mlp_bias", False)),
                           prefix=join_prefix(prefix, "mlp"))
        return PreNormDecoderLayer(self_attn, mlp, config.hidden_size, config.rms_norm_eps)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The routed experts' tensors (mlp.experts.N.{gate,up,down}_proj) go to their
        FusedMoE parameters, the router's e_score_correction_bias to FusedMoE's, the rest by
        name; multi-token-prediction layers are skipped."""
        if not any(is_moe_layer(self.config, i) for i in range(self.config.num_hidden_layers)):
            return load_named_weights(self, self._without_mtp(weights), self.stacked_params,
                                      skip_prefixes=self._skipped_prefixes())
        experts = ExpertWeightLoader(dict(self.named_parameters()),
                                     expert_params_mapping(self.config.n_routed_experts))
        loaded: set[str] = set()

        def by_name():
            for name, tensor in self._without_mtp(weights):
                expert_param = experts.load(name, tensor)
                if expert_param is None:
                    yield name.replace(ROUTER_BIAS, EXPERTS_BIAS), tensor
                else:
                    loaded.add(expert_param)

        loaded |= load_named_weights(self, by_name(), self.stacked_params,
                                     skip_prefixes=self._skipped_prefixes(),
                                     loaded_elsewhere=EXPERT_WEIGHTS)
        check_experts_loaded(self)
        return loaded

    def _without_mtp(self, weights: Iterable[tuple[str, torch.Tensor]]):
        num_layers = self.config.num_hidden_layers
        return ((name, tensor) for name, tensor in weights
                if not is_mtp_weight(name, num_layers))

    def _skipped_prefixes(self) -> tuple[str, ...]:
        return ("lm_head.",) if self.tie_word_embeddings else ()


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    """DeepSeek-V3/R1: sigmoid scores plus e_score_correction_bias for the choice,
    group-limited top-k (n_group, topk_group); the routing follows the config's model_type
    (fused_moe.routing_kwargs_from_config)."""
