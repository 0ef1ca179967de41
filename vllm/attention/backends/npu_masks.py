"""Causal masks in the forms the Ascend attention ops take, built once per device."""
import torch

COMPRESSED_MASK_SIZE = 2048  # sparse_mode 2/3/4 take a fixed 2048 x 2048 mask

_prompt_masks: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_compressed_masks: dict[torch.device, torch.Tensor] = {}


def prompt_causal_mask(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) mask for `_npu_flash_attention`: 0 where a query may look, elsewhere the
    value the ATB kernel expects for the dtype (-inf for float16, 1 for bfloat16)."""
    key = (dtype, device)
    mask = _prompt_masks.get(key)
    if mask is None or mask.shape[0] < size:
        above = torch.ones(size, size, dtype=torch.bool).triu(1)  # (S, S)
        fill = float("-inf") if dtype == torch.float16 else 1.0
        mask = torch.zeros(size, size).masked_fill(above, fill).to(dtype).to(device)
        _prompt_masks[key] = mask
    return mask[:size, :size].contiguous()


def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    """(2048, 2048) bool, True above the diagonal: the optimised mask of sparse_mode 3."""
    mask = _compressed_masks.get(device)
    if mask is None:
        size = COMPRESSED_MASK_SIZE
        mask = torch.ones(size, size, dtype=torch.bool).triu(1).to(device)
        _compressed_masks[device] = mask
    return mask
