"""Ascend NPU attention through torch_npu ops (adaptors in npu_ops.py).

KV cache per layer: (2, num_blocks, block_size, num_kv_heads, head_size), the layout the
ATB ops read (key_cache = kv_cache[0]). Per step, decodes go to `_npu_paged_attention`;
prompts with nothing cached to `_npu_flash_attention`; when any prompt has cached tokens
(a prefix hit or an earlier chunk) all prompts go to `npu_fused_infer_attention_score` over
the paged cache. Inside a TorchAir graph (decode only) KV writes use
`npu_scatter_nd_update_` and attention `npu_fused_infer_attention_score`.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from vllm.attention.backend import AttentionBackend, AttentionImpl, CommonAttentionMetadata
from vllm.attention.backends import npu_ops
from vllm.attention.backends.npu_kv_copy import gather_kv, scatter_kv
from vllm.attention.backends.npu_masks import compressed_causal_mask, prompt_causal_mask


@dataclass
class PrefillPlan:
    """The prompts (and prompt chunks) of one step: requests [num_decodes, num_reqs)."""
    token_start: int  # first prompt token in the flat batch
    query_lens: list[int]
    seq_lens: list[int]  # cached + new tokens
    has_cached: bool  # some prompt attends to tokens already in the cache
    query_lens_host: torch.Tensor  # (P,) int32, host
    block_table: torch.Tensor  # (P, max_blocks) int32
    pad_rows: torch.Tensor  # (Tp,) int64, request of each prompt token
    pad_cols: torch.Tensor  # (Tp,) int64, its row within the request


@dataclass
class NpuAttentionMetadata:
    common: CommonAttentionMetadata
    slots: torch.Tensor  # (T,) int32
    decode_block_table: torch.Tensor  # (num_decodes, max_blocks) int32
    decode_context_lens: torch.Tensor  # (num_decodes,) int32, stays on the host
    prefill: Optional[PrefillPlan]
    graph_mode: bool = False  # set by the graph runner: decode-only, graph-capable ops
    _device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def num_decodes(self) -> int:
        return self.common.num_decodes

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The device-side tensors, copied once per step (the first layer pays)."""
        copies = self._device_copies.get(device)
        if copies is None:
            copies = {"slots": self.slots.to(device),
                      "decode_block_table": self.decode_block_table.to(device)}
            if self.prefill is not None:
                copies["prefill_block_table"] = self.prefill.block_table.to(device)
                copies["pad_rows"] = self.prefill.pad_rows.to(device)
                copies["pad_cols"] = self.prefill.pad_cols.to(device)
            self._device_copies[device] = copies
        return copies


def build_prefill_plan(common: CommonAttentionMetadata) -> Optional[PrefillPlan]:
    first, num_reqs = common.num_decodes, common.num_reqs
    if first == num_reqs:
        return None
    starts = common.query_start_loc_list
    query_lens = [starts[i + 1] - starts[i] for i in range(first, num_reqs)]
    seq_lens = common.seq_lens_list[first:]
    lens = torch.tensor(query_lens, dtype=torch.int64)  # (P,)
    rows = torch.repeat_interleave(torch.arange(len(query_lens)), lens)  # (Tp,)
    row_starts = torch.cumsum(lens, 0) - lens  # (P,)
    cols = torch.arange(int(lens.sum())) - row_starts[rows]  # (Tp,)
    return PrefillPlan(
        token_start=starts[first], query_lens=query_lens, seq_lens=seq_lens,
        has_cached=any(s != q for s, q in zip(seq_lens, query_lens)),
        query_lens_host=lens.to(torch.int32), block_table=common.block_table[first:],
        pad_rows=rows, pad_cols=cols)


class NpuAttentionImpl(AttentionImpl):

    def forward(self, q, k, v, kv_cache, md: NpuAttentionMetadata):
        key_cache, value_cache = kv_cache[0], kv_cache[1]  # (num_blocks, block_size, KVH, D)
        device_md = md.on(q.device)
        num_tokens = md.common.num_actual_tokens
        q = q[:num_tokens].contiguous()  # (T, H, D)
        k = k[:num_tokens].contiguous()  # (T, KVH, D)
        v = v[:num_tokens].contiguous()  # (T, KVH, D)
        if md.graph_mode:
            return self._graph_decode(q, k, v, key_cache, value_cache, md, device_md)
        npu_ops.reshape_and_cache(k, v, key_cache, value_cache, device_md["slots"])
        out = torch.empty_like(q)  # (T, H, D)
        nd = md.num_decodes
        if nd:
            npu_ops.paged_attention(q[:nd], key_cache, value_cache,
                                    device_md["decode_block_table"], md.decode_context_lens,
                                    self.scale, self.num_heads, self.num_kv_heads, out[:nd])
        plan = md.prefill
        if plan is not None:
            start = plan.token_start
            if plan.has_cached:
                out[start:] = self._prefill_paged(q[start:], key_cache, value_cache, plan,
                                                  device_md)
            else:
                self._prefill_fresh(q[start:], k[start:], v[start:], plan, out[start:])
        return out

    def _prefill_fresh(self, q, k, v, plan: PrefillPlan, out) -> None:
        """Prompts with nothing cached: causal attention over their own tokens."""
        mask = prompt_causal_mask(max(plan.query_lens), q.dtype, q.device)  # (S, S)
        npu_ops.flash_attention(q, k, v, mask, plan.query_lens_host, self.scale,
                                self.num_heads, self.num_kv_heads, out)

    def _prefill_paged(self, q, key_cache, value_cache, plan: PrefillPlan, device_md):
        """Prompts over the paged cache (their new tokens are already written)."""
        rows, cols = device_md["pad_rows"], device_md["pad_cols"]
        padded = q.new_zeros(len(plan.query_lens), max(plan.query_lens), self.num_heads,
                             self.head_size)  # (P, S, H, D)
        padded[rows, cols] = q
        out = npu_ops.fused_infer_attention(
            padded, key_cache.flatten(2), value_cache.flatten(2),
            device_md["prefill_block_table"], plan.query_lens, plan.seq_lens,
            compressed_causal_mask(q.device), self.scale, self.num_heads, self.num_kv_heads)
        return out[rows, cols]  # (Tp, H, D)

    def _graph_decode(self, q, k, v, key_cache, value_cache, md, device_md):
        """Decode-only step inside a TorchAir graph (compiled with dynamic=True, so the
        sequence lengths are symbolic ints, not constants baked into the graph)."""
        slots = device_md["slots"].long().unsqueeze(1)  # (B, 1)
        npu_ops.scatter_nd_update(key_cache.flatten(0, 1), slots, k)
        npu_ops.scatter_nd_update(value_cache.flatten(0, 1), slots, v)
        out = npu_ops.fused_infer_attention(
            q.unsqueeze(1), key_cache.flatten(2), value_cache.flatten(2),
            device_md["decode_block_table"], [1] * q.shape[0],
            md.common.seq_lens_list, None, self.scale, self.num_heads,
            self.num_kv_heads)  # (B, 1, H, D)
        return out.squeeze(1)


class NpuAttentionBackend(AttentionBackend):
    name = "NPU_ATTN"
    impl_cls = NpuAttentionImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def build_metadata(common: CommonAttentionMetadata) -> NpuAttentionMetadata:
        nd = common.num_decodes
        return NpuAttentionMetadata(
            common=common, slots=common.slot_mapping.to(torch.int32),
            decode_block_table=common.block_table[:nd],
            decode_context_lens=common.seq_lens[:nd].cpu(),
            prefill=build_prefill_plan(common))

    @staticmethod
    def build_graph_metadata(common: CommonAttentionMetadata) -> NpuAttentionMetadata:
        """Metadata of a decode-only step that runs inside a TorchAir graph."""
        metadata = NpuAttentionBackend.build_metadata(common)
        metadata.graph_mode = True
        return metadata

    @staticmethod
    def gather_kv(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return gather_kv(kv_cache, slots)

    @staticmethod
    def scatter_kv(kv_cache: torch.Tensor, slots: torch.Tensor, head_start: int,
                   kv: torch.Tensor) -> None:
        scatter_kv(kv_cache, slots, head_start, kv)
