"""The expanded MLA prefill the SDPA backends share (CPU, CUDA): a prompt's latents (new, and
cached ones read back from the paged cache) expanded through kv_b_proj into per-head keys and
values for PyTorch SDPA, the cached context at once or `context_chunk_tokens` at a time
merged by log-sum-exp (chunked_prefill_for_mla)."""
import torch

from vllm.attention.backend import MLAAttentionImpl
from vllm.attention.ops.mla import attention_with_lse, expand_latent, merge_partial, split_latent
from vllm.attention.ops.sdpa import causal_attention, gather_sequence


class ExpandedPrefillMLAImpl(MLAAttentionImpl):
    # Cached tokens expanded per chunk when chunked context prefill is on.
    context_chunk_tokens = 1024
    chunked_context = False

    def enable_chunked_context_prefill(self) -> None:
        self.chunked_context = True

    # ---- prefill: latents expanded into per-head keys and values -----------------------
    def _prefill(self, q, kv_c_normed, k_pe, kv_cache, block_row, seq_len) -> torch.Tensor:
        num_cached = seq_len - q.shape[0]
        if num_cached == 0:
            keys, values = expand_latent(self.kv_b_proj, self.dims, kv_c_normed, k_pe)
            return causal_attention(q, keys, values, self.scale)
        if self.chunked_context:
            return self._prefill_chunked_context(q, kv_c_normed, k_pe, kv_cache, block_row,
                                                 num_cached)
        latents = gather_sequence(kv_cache, block_row, seq_len)  # (L, latent)
        keys, values = expand_latent(self.kv_b_proj, self.dims, *split_latent(latents, self.dims))
        return causal_attention(q, keys, values, self.scale, offset=num_cached)

    def _prefill_chunked_context(self, q, kv_c_normed, k_pe, kv_cache, block_row,
                                 num_cached) -> torch.Tensor:
        """The new tokens among themselves, then the cached context context_chunk_tokens at
        a time, merged by log-sum-exp: memory bounded by the chunk, not the context."""
        keys, values = expand_latent(self.kv_b_proj, self.dims, kv_c_normed, k_pe)
        out, lse = attention_with_lse(q, keys, values, self.scale, causal=True)
        for start in range(0, num_cached, self.context_chunk_tokens):
            end = min(start + self.context_chunk_tokens, num_cached)
            latents = gather_sequence(kv_cache, block_row, end, start)  # (n, latent)
            keys, values = expand_latent(self.kv_b_proj, self.dims,
                                         *split_latent(latents, self.dims))
            chunk_out, chunk_lse = attention_with_lse(q, keys, values, self.scale, causal=False)
            out, lse = merge_partial(out, lse, chunk_out, chunk_lse)
        return out.to(q.dtype)
