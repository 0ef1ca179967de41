"""Feeding Hugging Face checkpoint tensors to a model's parameters by name."""
from collections.abc import Iterable
from typing import Union

import torch
from torch import nn

from vllm.model_executor.layers.weight_utils import default_weight_loader

ShardId = Union[int, str, None]

# (our fused parameter name part, checkpoint name part, shard id)
MLP_STACKED_PARAMS: tuple[tuple[str, str, ShardId], ...] = (
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)
LLAMA_STACKED_PARAMS: tuple[tuple[str, str, ShardId], ...] = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
) + MLP_STACKED_PARAMS


def to_param_name(checkpoint_name: str, stacked_params) -> tuple[str, ShardId]:
    for param_part, checkpoint_part, shard_id in stacked_params:
        if f".{checkpoint_part}." in checkpoint_name:
            return checkpoint_name.replace(f".{checkpoint_part}.", f".{param_part}."), shard_id
    return checkpoint_name, None


def expected_checkpoint_names(param_names: Iterable[str], stacked_params,
                              loaded_elsewhere: tuple[str, ...] = ()) -> set[str]:
    """Every checkpoint tensor name the parameters `param_names` need, but those of
    parameters whose names contain one of `loaded_elsewhere`."""
    expected = set()
    for name in param_names:
        if any(part in name for part in loaded_elsewhere):
            continue
        parts = [(p, c) for p, c, _ in stacked_params if f".{p}." in name]
        if not parts:
            expected.add(name)
        for param_part, checkpoint_part in parts:
            expected.add(name.replace(f".{param_part}.", f".{checkpoint_part}."))
    return expected


def load_named_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                       stacked_params=LLAMA_STACKED_PARAMS,
                       skip_substrings: tuple[str, ...] = ("rotary_emb.inv_freq",),
                       skip_prefixes: tuple[str, ...] = (),
                       loaded_elsewhere: tuple[str, ...] = ()) -> set[str]:
    """Load checkpoint (name, tensor) pairs through each parameter's weight_loader.

    Raises ValueError for a name that matches no parameter and, at the end, for
    checkpoint tensors a parameter needs but never got (not counting parameters whose
    names contain one of `loaded_elsewhere`, which the caller loads and checks). Returns
    the names of the parameters that were loaded.
    """
    params = dict(model.named_parameters())
    expected = expected_checkpoint_names(params, stacked_params, loaded_elsewhere)
    seen: set[str] = set()
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.startswith(skip_prefixes) or any(s in name for s in skip_substrings):
            continue
        param_name, shard_id = to_param_name(name, stacked_params)
        param = params.get(param_name)
        if param is None:
            raise ValueError(f"unexpected weight {name!r} in the checkpoint: "
                             f"{type(model).__name__} has no parameter {param_name!r}")
        loader = getattr(param, "weight_loader", default_weight_loader)
        if shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        seen.add(name)
        loaded.add(param_name)
    missing = sorted(expected - seen)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"the checkpoint is missing {len(missing)} weight(s) of "
                         f"{type(model).__name__}: {shown}")
    return loaded
