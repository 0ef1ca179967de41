"""Ascend NPU attention through torch_npu ops (adaptors in npu_ops.py).

KV cache per layer: (2, num_blocks, block_size, num_kv_heads, head_size), the layout the
ATB ops read (key_cache = kv_cache[0]). Per step, decodes go to `_npu_paged_attention`;
prompts with nothing cached to `_npu_flash_attention`; when any prompt has cached tokens
(a prefix hit or an earlier chunk) all prompts go to `npu_fused_infer_attention_score` over
the paged cache. Inside a TorchAir graph (decode only) the metadata is NpuGraphMetadata, the
compiled step's tensor inputs; KV writes use `npu_scatter_nd_update_` and attention
TorchAir's `npu_fused_infer_attention_score`, which takes the sequence lengths as a tensor.
MLA (npu_mla.py) shares this step metadata and runs eagerly only.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from vllm.attention.backend import AttentionBackend, AttentionImpl, CommonAttentionMetadata
from vllm.attention.backends import npu_ops
from vllm.attention.backends.npu_kv_copy import gather_kv, scatter_kv
from vllm.attention.backends.npu_masks import compressed_causal_mask, prompt_causal_mask
from vllm.attention.backends.npu_mla import NpuMLAImpl


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where step metadata crosses to the device (the fake-NPU tests mark what crosses)."""
    return t.to(device, non_blocking=True)


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
    _mask: Optional[torch.Tensor] = field(default=None, repr=False)

    def causal_mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(S, S) prompt mask, S the longest prompt: made by the first layer, shared by all."""
        if self._mask is None:
            self._mask = prompt_causal_mask(max(self.query_lens), dtype, device)
        return self._mask


@dataclass
class NpuAttentionMetadata:
    """An eager step: host tensors, copied to the device once (the first layer pays)."""
    common: CommonAttentionMetadata
    slots: torch.Tensor  # (T,) int32
    decode_block_table: torch.Tensor  # (num_decodes, max_blocks) int32
    decode_context_lens: torch.Tensor  # (num_decodes,) int32, stays on the host
    prefill: Optional[PrefillPlan]
    _device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def num_decodes(self) -> int:
        return self.common.num_decodes

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        copies = self._device_copies.get(device)
        if copies is None:
            copies = {"slots": to_device(self.slots, device),
                      "decode_block_table": to_device(self.decode_block_table, device)}
            if self.prefill is not None:
                copies["prefill_block_table"] = to_device(self.prefill.block_table, device)
                copies["pad_rows"] = to_device(self.prefill.pad_rows, device)
                copies["pad_cols"] = to_device(self.prefill.pad_cols, device)
            self._device_copies[device] = copies
        return copies


@dataclass
class NpuGraphStep:
    """A padded decode-only step on the host; `on` gives the compiled step's inputs."""
    common: CommonAttentionMetadata

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Device tensors (copied here, before the graph runs), by NpuGraphMetadata field."""
        c = self.common
        return {"slots": to_device(c.slot_mapping.to(torch.int64), device),  # (B,)
                "block_table": to_device(c.block_table.to(torch.int32), device),  # (B, W)
                "seq_lens": to_device(c.seq_lens.to(torch.int64), device)}  # (B,)


@dataclass
class NpuGraphMetadata:
    """A decode-only step inside a TorchAir graph: device tensors only, no Python values
    that would be frozen into the graph."""
    slots: torch.Tensor  # (B,) int64
    block_table: torch.Tensor  # (B, max_blocks) int32
    seq_lens: torch.Tensor  # (B,) int64, tokens each request attends to


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

    def forward(self, q, k, v, kv_cache, md):
        key_cache, value_cache = kv_cache[0], kv_cache[1]  # (num_blocks, block_size, KVH, D)
        if isinstance(md, NpuGraphMetadata):
            return self._graph_decode(q, k, v, key_cache, value_cache, md)
        device_md = md.on(q.device)
        num_tokens = md.common.num_actual_tokens
        q = q[:num_tokens].contiguous()  # (T, H, D)
        k = k[:num_tokens].contiguous()  # (T, KVH, D)
        v = v[:num_tokens].contiguous()  # (T, KVH, D)
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
        mask = plan.causal_mask(q.dtype, q.device)  # (S, S)
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

    def _graph_decode(self, q, k, v, key_cache, value_cache, md: NpuGraphMetadata):
        """Decode-only step inside a TorchAir graph: every input is a device tensor."""
        block_size = key_cache.shape[1]
        slots = md.slots  # (B,) int64
        indices = torch.stack([slots // block_size, slots % block_size], dim=1)  # (B, 2)
        npu_ops.scatter_nd_update(key_cache, indices, k.contiguous())  # k: (B, KVH, D)
        npu_ops.scatter_nd_update(value_cache, indices, v.contiguous())  # v: (B, KVH, D)
        out = npu_ops.fused_infer_attention_graph(
            q.contiguous().unsqueeze(1), key_cache.flatten(2), value_cache.flatten(2),
            md.block_table, md.seq_lens, self.scale, self.num_heads,
            self.num_kv_heads)  # (B, 1, H, D)
        return out.squeeze(1)  # (B, H, D)


class NpuAttentionBackend(AttentionBackend):
    name = "NPU_ATTN"
    impl_cls = NpuAttentionImpl
    mla_impl_cls = NpuMLAImpl

    @staticmethod
    def build_metadata(common: CommonAttentionMetadata) -> NpuAttentionMetadata:
        nd = common.num_decodes
        return NpuAttentionMetadata(
            common=common, slots=common.slot_mapping.to(torch.int32),
            decode_block_table=common.block_table[:nd],
            decode_context_lens=common.seq_lens[:nd].cpu(),
            prefill=build_prefill_plan(common))

    @staticmethod
    def build_graph_metadata(common: CommonAttentionMetadata) -> NpuGraphStep:
        """A padded decode-only step for a TorchAir graph; `.on(device)` gives its inputs."""
        return NpuGraphStep(common)

    @staticmethod
    def graph_metadata(inputs: dict[str, torch.Tensor]) -> NpuGraphMetadata:
        """Inside the compiled step: the metadata over its tensor inputs."""
        return NpuGraphMetadata(**inputs)

    @staticmethod
    def gather_kv(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return gather_kv(kv_cache, slots)

    @staticmethod
    def scatter_kv(kv_cache: torch.Tensor, slots: torch.Tensor, head_start: int,
                   kv: torch.Tensor) -> None:
        scatter_kv(kv_cache, slots, head_start, kv)
