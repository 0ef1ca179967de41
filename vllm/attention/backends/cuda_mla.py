"""CUDA multi-head latent attention with PyTorch SDPA (it also runs on CPU tensors, so tests
can check it here): decodes absorb kv_b_proj into the query and attend over the paged latents
(one shared latent "head" as key and, its first kv_lora_rank values, as value; a masked SDPA
over the blocks of the batch's longest sequence); prefills expand the latents into per-head
keys and values (mla_prefill.py). flash-attn's kernels do not apply: flash-attn 2 takes one
head size for keys and values, at most 256, and the absorbed decode attends over
kv_lora_rank + rope (576) wide latents. Eager only (CudaPlatform captures no MLA graphs).
"""
import torch
import torch.nn.functional as F

from vllm.attention.backends.mla_prefill import ExpandedPrefillMLAImpl
from vllm.attention.ops.mla import absorb_query, project_values


class CudaMLAImpl(ExpandedPrefillMLAImpl):

    def forward(self, q, kv_c_normed, k_pe, kv_cache, md):
        common, device_md = md.common, md.on(q.device)
        num_tokens = common.num_actual_tokens
        latent = torch.cat([kv_c_normed[:num_tokens], k_pe[:num_tokens]], dim=-1)  # (T, latent)
        kv_cache.flatten(0, 1).index_copy_(0, device_md["slots"], latent.to(kv_cache.dtype))
        out = q.new_empty(q.shape[0], self.dims.num_heads, self.dims.v_head_dim)  # (T, H, v)
        nd = common.num_decodes
        if nd:
            out[:nd] = self._decode(q[:nd], kv_cache, device_md["block_table"][:nd],
                                    device_md["seq_lens"][:nd], max(common.seq_lens_list[:nd]))
        starts, block_table = common.query_start_loc_list, device_md["block_table"]
        for i in range(nd, common.num_reqs):
            rows = slice(starts[i], starts[i + 1])
            out[rows] = self._prefill(q[rows], kv_c_normed[rows], k_pe[rows], kv_cache,
                                      block_table[i], common.seq_lens_list[i])
        return out

    def _decode(self, q, kv_cache, block_table, seq_lens, max_seq_len: int) -> torch.Tensor:
        dims, weight = self.dims, self.kv_b_proj.weight
        q_nope, q_pe = q.split([dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1)
        query = torch.cat([absorb_query(weight, dims, q_nope), q_pe], dim=-1)  # (B, H, latent)
        block_size = kv_cache.shape[1]
        width = -(-max_seq_len // block_size)
        latents = kv_cache[block_table[:, :width].long()].flatten(1, 2)  # (B, W * bs, latent)
        positions = torch.arange(latents.shape[1], device=q.device)  # (L,)
        valid = positions.unsqueeze(0) < seq_lens.unsqueeze(1)  # (B, L)
        keys = latents.unsqueeze(1)  # (B, 1, L, latent)
        out_latent = F.scaled_dot_product_attention(
            query.unsqueeze(2), keys, keys[..., :dims.kv_lora_rank],
            attn_mask=valid[:, None, None, :], scale=self.scale,
            enable_gqa=True)  # q (B, H, 1, latent) -> (B, H, 1, kv_lora_rank)
        return project_values(weight, dims, out_latent.squeeze(2))  # (B, H, v)
