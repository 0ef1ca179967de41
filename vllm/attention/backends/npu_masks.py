"""Causal masks in the forms the Ascend attention ops take, built on the device in the
dtype the ops read, and kept per (dtype, device)."""
import torch

COMPRESSED_MASK_SIZE = 2048  # sparse_mode 2/3/4 take a fixed 2048 x 2048 mask
MIN_PROMPT_MASK = 128  # the prompt mask grows by doubling from here
RING_MLA_MASK_SIZE = 512  # npu_ring_mla's mask_type_triu mask is (512, 512)

_prompt_masks: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_compressed_masks: dict[torch.device, torch.Tensor] = {}


def prompt_causal_mask(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) contiguous mask for `_npu_flash_attention`: 0 where a query may look,
    elsewhere the value the ATB kernel expects for the dtype (-inf for float16, 1 for
    bfloat16). Callers keep it for the step (PrefillPlan.causal_mask): one copy per step."""
    full = _grown_prompt_mask(size, dtype, device)  # (S', S'), S' >= size
    if full.shape[0] == size:
        return full
    return full[:size, :size].contiguous()  # (size, size)


def _grown_prompt_mask(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    mask = _prompt_masks.get(key)
    if mask is None or mask.shape[0] < size:
        capacity = MIN_PROMPT_MASK if mask is None else mask.shape[0]
        while capacity < size:
            capacity *= 2
        fill = float("-inf") if dtype == torch.float16 else 1.0
        mask = torch.full((capacity, capacity), fill, dtype=dtype, device=device)  # (S', S')
        mask.triu_(1)  # 0 on and below the diagonal
        _prompt_masks[key] = mask
    return mask


def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    """(2048, 2048) bool, True above the diagonal: the optimised mask of sparse_mode 3."""
    mask = _compressed_masks.get(device)
    if mask is None:
        size = COMPRESSED_MASK_SIZE
        mask = torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)  # (2048, 2048)
        _compressed_masks[device] = mask
    return mask
