"""CPU attention: SDPA for prefills, an in-place paged kernel for decodes (and for every
token in batch-invariant mode); MLA in cpu_mla.py."""
import torch

from vllm.attention.backend import AttentionBackend, AttentionImpl, CommonAttentionMetadata
from vllm.attention.backends.cpu_mla import CPUMLAImpl
from vllm.attention.ops.paged_attention import paged_attention_decode, reshape_and_cache
from vllm.attention.ops.sdpa import causal_attention, gather_sequence


class CPUAttentionImpl(AttentionImpl):
    batch_invariant = False

    def make_batch_invariant(self) -> None:
        self.batch_invariant = True

    def forward(self, q, k, v, kv_cache, md: CommonAttentionMetadata):
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        num_tokens = md.num_actual_tokens
        reshape_and_cache(k[:num_tokens], v[:num_tokens], key_cache, value_cache,
                          md.slot_mapping)
        out = torch.empty_like(q)  # (T, H, D)
        if self.batch_invariant:
            # The decode kernel's order over a token's context depends on nothing else.
            view = md.per_token
            paged_attention_decode(out[:num_tokens], q[:num_tokens], key_cache, value_cache,
                                   view.block_table, view.seq_lens, self.scale)
            return out
        num_decodes = md.num_decodes
        if num_decodes:
            paged_attention_decode(out[:num_decodes], q[:num_decodes], key_cache, value_cache,
                                   md.block_table[:num_decodes], md.seq_lens[:num_decodes],
                                   self.scale)
        starts = md.query_start_loc_list
        for i in range(num_decodes, md.num_reqs):
            start, end, seq_len = starts[i], starts[i + 1], md.seq_lens_list[i]
            out[start:end] = self._prefill(q[start:end], k[start:end], v[start:end],
                                           key_cache, value_cache, md.block_table[i], seq_len)
        return out

    def _prefill(self, q, k, v, key_cache, value_cache, block_row, seq_len):
        num_new = q.shape[0]
        num_cached = seq_len - num_new
        if num_cached == 0:
            return causal_attention(q, k, v, self.scale)
        keys = gather_sequence(key_cache, block_row, seq_len)  # (L, KVH, D)
        values = gather_sequence(value_cache, block_row, seq_len)  # (L, KVH, D)
        return causal_attention(q, keys, values, self.scale, offset=num_cached)


class CPUAttentionBackend(AttentionBackend):
    name = "CPU_ATTN"
    impl_cls = CPUAttentionImpl
    mla_impl_cls = CPUMLAImpl
    latent_transfer = True
