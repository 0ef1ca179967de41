"""Ascend NPU multi-head latent attention through torch_npu ops (adaptors in npu_mla_ops.py).

The latent cache (num_blocks, block_size, kv_lora_rank + rope) is read by the ATB ops as one
KV head, (num_blocks, block_size, 1, latent). Per step: new latents are written with
`_npu_reshape_and_cache_siso`; decodes absorb kv_b_proj into the query and attend over the
cached latents with `_npu_paged_attention_mla`; prompts expand their new latents into
per-head keys and values for `npu_ring_mla` (causal), and a cached context is expanded
(at once, or `context_chunk_tokens` at a time with chunked_prefill_for_mla) and merged in by
further `npu_ring_mla` calls that carry the log-sum-exp. Step metadata is the GQA
backend's NpuAttentionMetadata (npu.py).
"""
import torch

from vllm.attention.backend import MLAAttentionImpl
from vllm.attention.backends import npu_mla_ops
from vllm.attention.backends.npu_masks import RING_MLA_MASK_SIZE, prompt_causal_mask
from vllm.attention.ops.mla import absorb_query, expand_latent, project_values, split_latent
from vllm.attention.ops.sdpa import gather_sequence


class NpuMLAImpl(MLAAttentionImpl):
    # Cached tokens expanded per npu_ring_mla call when chunked context prefill is on.
    context_chunk_tokens = 1024
    chunked_context = False

    def enable_chunked_context_prefill(self) -> None:
        self.chunked_context = True

    def forward(self, q, kv_c_normed, k_pe, kv_cache, md):
        device_md = md.on(q.device)
        num_tokens = md.common.num_actual_tokens
        cache = kv_cache.unsqueeze(2)  # (num_blocks, block_size, 1, latent)
        latent = torch.cat([kv_c_normed[:num_tokens], k_pe[:num_tokens]], dim=-1)
        npu_mla_ops.write_latent(latent.to(kv_cache.dtype).unsqueeze(1).contiguous(), cache,
                                 device_md["slots"])  # latent: (T, 1, latent)
        out = q.new_empty(q.shape[0], self.dims.num_heads, self.dims.v_head_dim)  # (T, H, v)
        num_decodes = md.num_decodes
        if num_decodes:
            out[:num_decodes] = self._decode(q[:num_decodes], cache,
                                             device_md["decode_block_table"],
                                             md.decode_context_lens)
        plan = md.prefill
        if plan is not None:
            rows = slice(plan.token_start, num_tokens)
            out[rows] = self._prefill(q[rows], kv_c_normed[rows], k_pe[rows], kv_cache, plan,
                                      device_md["prefill_block_table"])
        return out

    # ---- decode: attention over the latents, kv_b_proj absorbed ------------------------
    def _decode(self, q, cache, block_table, context_lens) -> torch.Tensor:
        dims, weight = self.dims, self.kv_b_proj.weight
        q_nope, q_pe = q.split([dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1)
        query = torch.cat([absorb_query(weight, dims, q_nope), q_pe], dim=-1)  # (B, H, latent)
        out_latent = q.new_empty(q.shape[0], dims.num_heads, dims.kv_lora_rank)  # (B, H, L)
        npu_mla_ops.paged_attention_mla(query.contiguous(), cache, block_table, context_lens,
                                        self.scale, dims.num_heads, dims.kv_lora_rank,
                                        out_latent)
        return project_values(weight, dims, out_latent)  # (B, H, v)

    # ---- prefill: latents expanded into per-head keys and values -----------------------
    def _prefill(self, q, kv_c_normed, k_pe, kv_cache, plan, block_table) -> torch.Tensor:
        dims = self.dims
        q_nope, q_pe = (t.contiguous() for t in
                        q.split([dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1))
        mask = prompt_causal_mask(RING_MLA_MASK_SIZE, q.dtype, q.device)  # (512, 512)
        out = q.new_empty(q.shape[0], dims.num_heads, dims.v_head_dim)  # (Tp, H, v)
        lse = torch.empty(dims.num_heads, q.shape[0], dtype=torch.float32,
                          device=q.device)  # (H, Tp)
        self._ring(q_nope, q_pe, kv_c_normed, k_pe, mask, plan.query_lens_host, out, lse,
                   causal=True)
        if plan.has_cached:
            self._merge_context(q_nope, q_pe, kv_cache, plan, block_table, mask, out, lse)
        return out

    def _merge_context(self, q_nope, q_pe, kv_cache, plan, block_table, mask, out, lse):
        """Each prompt's cached tokens, a chunk at a time for every prompt together."""
        cached = [s - n for s, n in zip(plan.seq_lens, plan.query_lens)]
        chunk = self.context_chunk_tokens if self.chunked_context else max(cached)
        for start in range(0, max(cached), chunk):
            spans = [(start, min(start + chunk, c)) if c > start else (0, 0) for c in cached]
            latents = torch.cat([gather_sequence(kv_cache, block_table[i], end, begin)
                                 for i, (begin, end) in enumerate(spans)])  # (n, latent)
            kv_lens = [end - begin for begin, end in spans]
            seq_lens = torch.tensor([plan.query_lens, kv_lens], dtype=torch.int32)  # (2, P)
            self._ring(q_nope, q_pe, *split_latent(latents, self.dims), mask, seq_lens, out,
                       lse, causal=False)

    def _ring(self, q_nope, q_pe, kv_c_normed, k_pe, mask, seq_lens, out, lse, causal):
        """npu_ring_mla over the latents' expanded keys and values; with causal False the
        result is merged into `out` / `lse`."""
        keys, values = expand_latent(self.kv_b_proj, self.dims, kv_c_normed, k_pe)
        k_nope, k_rope = keys.split([self.dims.qk_nope_head_dim, self.dims.qk_rope_head_dim],
                                    dim=-1)
        npu_mla_ops.ring_mla(q_nope, q_pe, k_nope.contiguous(), k_rope.contiguous(),
                             values.contiguous(), mask, seq_lens, self.dims.num_heads,
                             self.scale, out, lse, causal=causal, merge=not causal)
