"""CUDA attention: flash-attn over the paged cache when it imports and the block size suits
it, else PyTorch SDPA (which also runs on CPU tensors, so tests can check it here).

KV cache per layer: (2, num_blocks, block_size, num_kv_heads, head_size), flash-attn's
paged layout. Decode steps are captured as CUDA graphs only over flash-attn (fixed shapes,
no host syncs); the SDPA decode is eager and trims the gathered blocks to the longest
sequence. SDPA's enable_gqa needs PyTorch >= 2.5. MLA: cuda_mla.py (SDPA only, eager).
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from vllm.attention.backend import AttentionBackend, AttentionImpl, CommonAttentionMetadata
from vllm.attention.backends.cuda_mla import CudaMLAImpl
from vllm.attention.ops.sdpa import causal_attention, gather_sequence

try:
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    HAS_FLASH_ATTN = True
except ImportError:
    HAS_FLASH_ATTN = False

# flash-attn 2 reads a paged cache only when page_block_size is a multiple of 256
# (flash_attn_with_kvcache / flash_attn_varlen_func docstrings, flash-attn >= 2.5).
FLASH_ATTN_PAGE_MULTIPLE = 256


def use_flash_attn(block_size: int) -> bool:
    return HAS_FLASH_ATTN and block_size % FLASH_ATTN_PAGE_MULTIPLE == 0


@dataclass
class CudaAttentionMetadata:
    common: CommonAttentionMetadata
    _device_copies: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Device copies of the step's tensors (no copy when they already live there, as
        the graph runner's static buffers do)."""
        copies = self._device_copies.get(device)
        if copies is None:
            c = self.common
            copies = {"slots": c.slot_mapping.to(device),  # (T,) int64
                      "seq_lens": c.seq_lens.to(device),  # (B,) int32
                      "block_table": c.block_table.to(device),  # (B, max_blocks) int32
                      "query_start_loc": c.query_start_loc.to(device)}  # (B+1,) int32
            self._device_copies[device] = copies
        return copies


class CudaAttentionImpl(AttentionImpl):

    def forward(self, q, k, v, kv_cache, md: CudaAttentionMetadata):
        key_cache, value_cache = kv_cache[0], kv_cache[1]  # (num_blocks, block_size, KVH, D)
        common, device_md = md.common, md.on(q.device)
        num_tokens = common.num_actual_tokens
        write_kv(k[:num_tokens], v[:num_tokens], key_cache, value_cache, device_md["slots"])
        flash = use_flash_attn(key_cache.shape[1])
        out = torch.empty_like(q)  # (T, H, D)
        nd = common.num_decodes
        if nd and flash:
            out[:nd] = self._decode_flash(q[:nd], key_cache, value_cache,
                                          device_md["block_table"][:nd],
                                          device_md["seq_lens"][:nd])
        elif nd:  # eager only (CudaPlatform captures no graphs without flash-attn)
            out[:nd] = self._decode_sdpa(q[:nd], key_cache, value_cache,
                                         device_md["block_table"][:nd],
                                         device_md["seq_lens"][:nd],
                                         max(common.seq_lens_list[:nd]))
        if nd < common.num_reqs:
            prefill = self._prefill_flash if flash else self._prefill_sdpa
            start = common.query_start_loc_list[nd]
            out[start:num_tokens] = prefill(q[start:num_tokens], k[start:num_tokens],
                                            v[start:num_tokens], key_cache, value_cache,
                                            common, device_md)
        return out

    # ---- flash-attn ----------------------------------------------------------------------
    def _decode_flash(self, q, key_cache, value_cache, block_table, seq_lens):
        out = flash_attn_with_kvcache(q.unsqueeze(1), key_cache, value_cache,
                                      cache_seqlens=seq_lens, block_table=block_table,
                                      softmax_scale=self.scale, causal=True)  # (B, 1, H, D)
        return out.squeeze(1)

    def _prefill_flash(self, q, k, v, key_cache, value_cache, common, device_md):
        nd = common.num_decodes
        starts = device_md["query_start_loc"][nd:]
        seq_lens = device_md["seq_lens"][nd:]
        cu_q = (starts - starts[0]).to(torch.int32)  # (P+1,)
        cu_k = F.pad(torch.cumsum(seq_lens, 0, dtype=torch.int32), (1, 0))  # (P+1,)
        query_lens = [b - a for a, b in zip(common.query_start_loc_list[nd:],
                                            common.query_start_loc_list[nd + 1:])]
        # Causal with more keys than queries aligns to the bottom right (flash-attn >= 2.1).
        return flash_attn_varlen_func(
            q, key_cache, value_cache, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
            max_seqlen_q=max(query_lens), max_seqlen_k=max(common.seq_lens_list[nd:]),
            softmax_scale=self.scale, causal=True, block_table=device_md["block_table"][nd:])

    # ---- PyTorch SDPA --------------------------------------------------------------------
    def _decode_sdpa(self, q, key_cache, value_cache, block_table, seq_lens,
                     max_seq_len: int):
        """Attends over the blocks of the batch's longest sequence, masked by seq_lens."""
        block_size = key_cache.shape[1]
        width = -(-max_seq_len // block_size)
        ids = block_table[:, :width].long()  # (B, W)
        keys = key_cache[ids].flatten(1, 2)  # (B, W * block_size, KVH, D)
        values = value_cache[ids].flatten(1, 2)  # (B, W * block_size, KVH, D)
        positions = torch.arange(width * block_size, device=q.device)  # (L,)
        valid = positions.unsqueeze(0) < seq_lens.unsqueeze(1)  # (B, L)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=valid[:, None, None, :], scale=self.scale,
            enable_gqa=True)  # q (B, H, 1, D), k/v (B, KVH, L, D) -> (B, H, 1, D)
        return out.squeeze(2)  # (B, H, D)

    def _prefill_sdpa(self, q, k, v, key_cache, value_cache, common, device_md):
        nd, starts = common.num_decodes, common.query_start_loc_list
        first = starts[nd]
        out = torch.empty_like(q)  # (Tp, H, D)
        block_table = device_md["block_table"]
        for i in range(nd, common.num_reqs):
            rows = slice(starts[i] - first, starts[i + 1] - first)
            seq_len, num_new = common.seq_lens_list[i], starts[i + 1] - starts[i]
            if seq_len == num_new:
                out[rows] = causal_attention(q[rows], k[rows], v[rows], self.scale)
                continue
            keys = gather_sequence(key_cache, block_table[i], seq_len)  # (L, KVH, D)
            values = gather_sequence(value_cache, block_table[i], seq_len)  # (L, KVH, D)
            out[rows] = causal_attention(q[rows], keys, values, self.scale,
                                         offset=seq_len - num_new)
        return out


def write_kv(key: torch.Tensor,  # (T, KVH, D)
             value: torch.Tensor,  # (T, KVH, D)
             key_cache: torch.Tensor,  # (num_blocks, block_size, KVH, D)
             value_cache: torch.Tensor,
             slots: torch.Tensor) -> None:  # (T,) int64, every slot valid
    """No host sync and fixed shapes: graph-safe. Padded rows repeat a real row's slot and
    values (the graph runner pads so), which rewrites the same bytes."""
    key_cache.flatten(0, 1).index_copy_(0, slots, key)
    value_cache.flatten(0, 1).index_copy_(0, slots, value)


class CudaAttentionBackend(AttentionBackend):
    name = "CUDA_ATTN"
    impl_cls = CudaAttentionImpl
    mla_impl_cls = CudaMLAImpl

    @staticmethod
    def build_metadata(common: CommonAttentionMetadata) -> CudaAttentionMetadata:
        return CudaAttentionMetadata(common)

    @staticmethod
    def preferred_block_size() -> Optional[int]:
        return FLASH_ATTN_PAGE_MULTIPLE if HAS_FLASH_ATTN else None

    @staticmethod
    def can_capture_decode(block_size: int) -> bool:
        # The SDPA decode would gather every block-table column under a graph
        # (B * H * max_model_len * D per layer), so it runs eagerly.
        return use_flash_attn(block_size)
