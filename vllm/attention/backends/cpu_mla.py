"""CPU multi-head latent attention: decodes attend over the cached latents with kv_b_proj
absorbed (the paged decode kernel, one shared latent "head"), prefills expand the latents into
per-head keys and values for SDPA, at once or a context chunk at a time (mla_prefill.py)."""
import torch

from vllm.attention.backend import CommonAttentionMetadata
from vllm.attention.backends.mla_prefill import ExpandedPrefillMLAImpl
from vllm.attention.ops.mla import absorb_query, absorbed_weights, project_values, write_latent
from vllm.attention.ops.paged_attention import paged_attention_decode


class CPUMLAImpl(ExpandedPrefillMLAImpl):
    # (kernel, W_UK^T per head (H, L, nope), W_UV per head (H, v, L)) in batch-invariant mode
    invariant = None

    def make_batch_invariant(self) -> None:
        from vllm.platforms import current_platform
        kernel = current_platform.batch_invariant_linear(self.kv_b_proj.weight.dtype)
        w_uk, w_uv = absorbed_weights(self.kv_b_proj.weight, self.dims)
        self.invariant = (kernel, w_uk.transpose(1, 2).contiguous(), w_uv.contiguous())

    def forward(self, q, kv_c_normed, k_pe, kv_cache, md: CommonAttentionMetadata):
        num_tokens = md.num_actual_tokens
        write_latent(kv_cache, md.slot_mapping, kv_c_normed[:num_tokens], k_pe[:num_tokens])
        out = q.new_empty(q.shape[0], self.dims.num_heads, self.dims.v_head_dim)  # (T, H, v)
        if self.invariant is not None:
            # Every token alone over its own causal prefix, in one fixed order.
            view = md.per_token
            out[:num_tokens] = self._absorbed(q[:num_tokens], kv_cache, view.block_table,
                                              view.seq_lens)
            return out
        num_decodes = md.num_decodes
        if num_decodes:
            out[:num_decodes] = self._absorbed(q[:num_decodes], kv_cache,
                                               md.block_table[:num_decodes],
                                               md.seq_lens[:num_decodes])
        starts = md.query_start_loc_list
        for i in range(num_decodes, md.num_reqs):
            start, end = starts[i], starts[i + 1]
            out[start:end] = self._prefill(q[start:end], kv_c_normed[start:end],
                                           k_pe[start:end], kv_cache, md.block_table[i],
                                           md.seq_lens_list[i])
        return out

    # ---- decode: attention over the latents, kv_b_proj absorbed ------------------------
    def _absorbed(self, q, kv_cache, block_table, seq_lens) -> torch.Tensor:
        dims = self.dims
        q_nope, q_pe = q.split([dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1)
        q_latent = torch.cat([self._absorb_query(q_nope), q_pe], dim=-1)  # (B, H, latent)
        # One latent per token serves as the key and, its first kv_lora_rank values, as
        # the value of every head: MQA over a single cached "head".
        latents = kv_cache.unsqueeze(2)  # (num_blocks, block_size, 1, latent)
        out_latent = torch.empty_like(q_latent)  # (B, H, latent)
        paged_attention_decode(out_latent, q_latent, latents, latents, block_table, seq_lens,
                               self.scale)
        return self._project_values(out_latent[..., :dims.kv_lora_rank])  # (B, H, v)

    def _absorb_query(self, q_nope: torch.Tensor) -> torch.Tensor:
        """(B, H, nope) -> W_UK^T q_nope per head, (B, H, kv_lora_rank)."""
        if self.invariant is not None:
            kernel, w_uk_t, _ = self.invariant
            return per_head_linear(kernel, q_nope, w_uk_t)
        return absorb_query(self.kv_b_proj.weight, self.dims, q_nope)

    def _project_values(self, out_latent: torch.Tensor) -> torch.Tensor:
        """(B, H, kv_lora_rank) -> W_UV out_latent per head, (B, H, v)."""
        if self.invariant is not None:
            kernel, _, w_uv = self.invariant
            return per_head_linear(kernel, out_latent, w_uv)
        return project_values(self.kv_b_proj.weight, self.dims, out_latent)

def per_head_linear(kernel, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """x (B, H, in), weights (H, out, in) -> (B, H, out) through the fixed-order kernel
    `kernel(out, x, weight, bias)`, one head at a time."""
    out = x.new_empty(x.shape[1], x.shape[0], weights.shape[1])  # (H, B, out)
    for head in range(x.shape[1]):
        kernel(out[head], x[:, head].contiguous(), weights[head], None)
    return out.transpose(0, 1)
