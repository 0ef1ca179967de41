"""Routed experts' checkpoint names (`mlp.experts.N.gate_proj.weight`) and FusedMoE's parameters."""
from typing import Optional

import torch
from torch import nn

# shard id -> (FusedMoE parameter family, the checkpoint's projection of one expert); a
# checkpoint tensor `<projection>.<suffix>` loads into the parameter `<family>_<suffix>`
EXPERT_SHARDS = {
    "w1": ("w13", "gate_proj"),
    "w3": ("w13", "up_proj"),
    "w2": ("w2", "down_proj"),
}
EXPERTS_MODULE = "experts"  # the FusedMoE module's name inside its MLP, as in the checkpoint
# the tensors an expert projection may have: its weight, and the scales of a W8A8 checkpoint
EXPERT_SUFFIXES = ("weight", "weight_scale", "weight_offset")


def expert_params_mapping(num_experts: int) -> list[tuple[str, str, int, str]]:
    """(parameter name part, checkpoint name part, expert id, shard id) for every expert's
    projections, e.g. ("experts.w13_", "experts.3.gate_proj.", 3, "w1"): the
    checkpoint's `<part><suffix>` feeds `<parameter part><suffix>` (suffix: weight,
    weight_scale, ...) through its `weight_loader(param, tensor, shard_id, expert_id)`."""
    return [(f"{EXPERTS_MODULE}.{family}_", f"{EXPERTS_MODULE}.{expert}.{projection}.",
             expert, shard_id)
            for expert in range(num_experts)
            for shard_id, (family, projection) in EXPERT_SHARDS.items()]


def expert_checkpoint_name(layer_prefix: str, expert_id: int, shard_id: str,
                           suffix: str = "weight") -> str:
    """The checkpoint name of one expert's projection, under the FusedMoE module's own name
    (`model.layers.3.mlp.experts`)."""
    projection = EXPERT_SHARDS[shard_id][1]
    return ".".join(filter(None, (layer_prefix, str(expert_id), projection, suffix)))


class ExpertWeightLoader:
    """Feeds routed experts' checkpoint tensors to the FusedMoE parameters among a model's
    `params` (its named_parameters) through `expert_params_mapping`."""

    def __init__(self, params: dict[str, nn.Parameter],
                 mapping: list[tuple[str, str, int, str]]):
        self.params = params
        self.by_part = {checkpoint_part: (param_part, expert, shard)
                        for param_part, checkpoint_part, expert, shard in mapping}

    def load(self, name: str, tensor: torch.Tensor) -> Optional[str]:
        """Load checkpoint tensor `name` when it is a routed expert's weight; returns the
        parameter's name, None when `name` is no expert weight of the mapping."""
        target = _expert_part(name)
        if target is None or target[0] not in self.by_part:
            return None
        checkpoint_part, stem, suffix = target
        param_part, expert_id, shard_id = self.by_part[checkpoint_part]
        param_name = stem + param_part + suffix
        param = self.params.get(param_name)
        if param is None:
            raise ValueError(f"unexpected expert weight {name!r}: the model has no "
                             f"parameter {param_name!r}")
        param.weight_loader(param, tensor, shard_id, expert_id)
        return param_name


def _expert_part(name: str) -> Optional[tuple[str, str, str]]:
    """("experts.3.gate_proj.", "model.layers.1.mlp.", "weight") for a name ending in
    `experts.<id>.<projection>.<suffix>`, else None."""
    parts = name.split(".")
    if len(parts) < 4 or parts[-4] != EXPERTS_MODULE or parts[-1] not in EXPERT_SUFFIXES:
        return None
    stem = ".".join(parts[:-4])
    return ".".join(parts[-4:-1]) + ".", stem + "." if stem else "", parts[-1]


def check_experts_loaded(model: nn.Module) -> None:
    """ValueError naming the checkpoint tensors some FusedMoE of `model` never got."""
    missing = [name for module in model.modules()
               for name in getattr(module, "missing_expert_weights", lambda: [])()]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"the checkpoint is missing {len(missing)} expert weight(s): {shown}")
