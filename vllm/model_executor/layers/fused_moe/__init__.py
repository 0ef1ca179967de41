"""Mixture-of-experts layer of DeepSeek-V2/V3: routing, experts run expert by expert, weights."""
from vllm.model_executor.layers.fused_moe.experts import run_experts
from vllm.model_executor.layers.fused_moe.layer import FusedMoE
from vllm.model_executor.layers.fused_moe.routing import (
    Routing, route, routing_kwargs_from_config, select_experts)
from vllm.model_executor.layers.fused_moe.weights import (
    ExpertWeightLoader, check_experts_loaded, expert_checkpoint_name, expert_params_mapping)

__all__ = ["ExpertWeightLoader", "FusedMoE", "Routing", "check_experts_loaded",
           "expert_checkpoint_name", "expert_params_mapping", "route",
           "routing_kwargs_from_config", "run_experts", "select_experts"]
