"""One adaptor per torch_npu op of the NPU MLA backend (npu_mla.py): the only place that
spells their argument names. The ops and their use follow vllm-ascend's DeepSeek MLA
(`vllm_ascend/attention/mla_v1.py`, 0.9.x line); each adaptor names its schema's source.
"""
import torch
import torch_npu


def write_latent(latent: torch.Tensor,  # (T, 1, kv_lora_rank + rope), the cache's dtype
                 cache: torch.Tensor,  # (num_blocks, block_size, 1, kv_lora_rank + rope)
                 slots: torch.Tensor) -> None:  # (T,) int32 on the device
    # op-plugin ATB schema: _npu_reshape_and_cache_siso(Tensor key, Tensor(a!) key_cache,
    #   Tensor slot_indices) -> ()  (ReshapeAndCacheOperation with kvCacheCfg
    #   K_CACHE_V_BYPASS: a key cache only). vllm-ascend writes the MLA latent with it.
    torch_npu._npu_reshape_and_cache_siso(key=latent, key_cache=cache, slot_indices=slots)


def paged_attention_mla(query: torch.Tensor,  # (B, H, kv_lora_rank + rope), absorbed
                        cache: torch.Tensor,  # (num_blocks, block_size, 1, kv_lora_rank + rope)
                        block_table: torch.Tensor,  # (B, max_blocks) int32 on the device
                        context_lens: torch.Tensor,  # (B,) int32 on the host
                        scale: float, num_heads: int, kv_lora_rank: int,
                        out: torch.Tensor) -> None:  # (B, H, kv_lora_rank), written
    # op-plugin ATB schema: _npu_paged_attention_mla(Tensor query, Tensor key_cache,
    #   int num_kv_heads, int num_heads, float scale_value, Tensor block_table,
    #   Tensor context_lens, int mla_vheadsize, Tensor(a!) out) -> ()
    # CANN ATB PagedAttentionOperation with mlaVHeadSize: the values are the first
    # mla_vheadsize channels of each cached key; contextLens int32 on the CPU.
    torch_npu._npu_paged_attention_mla(query=query, key_cache=cache, num_kv_heads=1,
                                       num_heads=num_heads, scale_value=scale,
                                       block_table=block_table, context_lens=context_lens,
                                       mla_vheadsize=kv_lora_rank, out=out)


def ring_mla(q_nope: torch.Tensor,  # (Tq, H, nope), requests packed
             q_rope: torch.Tensor,  # (Tq, H, rope)
             k_nope: torch.Tensor,  # (Tk, H, nope)
             k_rope: torch.Tensor,  # (Tk, H, rope)
             value: torch.Tensor,  # (Tk, H, v)
             mask: torch.Tensor,  # (512, 512) query dtype, npu_masks.prompt_causal_mask
             seq_lens: torch.Tensor,  # (B,) or (2, B) int32 on the host
             num_heads: int, scale: float,
             out: torch.Tensor,  # (Tq, H, v): written; read first when `merge`
             lse: torch.Tensor,  # (H, Tq) float32: written; read first when `merge`
             causal: bool, merge: bool) -> None:
    # torch_npu.atb.npu_ring_mla(q_nope, q_rope, k_nope, k_rope, value, mask, seqlen,
    #   int head_num, int kv_head_num, *, pre_out=None, prev_lse=None, float qk_scale=1,
    #   str? kernel_type=None, str? mask_type=None, str? input_layout=None,
    #   str? calc_type=None, output, softmax_lse) -> (Tensor, Tensor)  (torch_npu atb API
    #   docstring; the outputs are passed as `output` / `softmax_lse`, as its example does).
    # seqlen (B,): query and key lengths equal; (2, B): query lengths, then key lengths.
    # calc_type_first_ring: no previous result, writes the log-sum-exp; calc_type_default:
    # merges with pre_out / prev_lse. mask_type_triu: causal over equal lengths.
    torch_npu.atb.npu_ring_mla(
        q_nope=q_nope, q_rope=q_rope, k_nope=k_nope, k_rope=k_rope, value=value, mask=mask,
        seqlen=seq_lens, head_num=num_heads, kv_head_num=num_heads,
        pre_out=out if merge else None, prev_lse=lse if merge else None, qk_scale=scale,
        kernel_type="kernel_type_high_precision",
        mask_type="mask_type_triu" if causal else "no_mask", input_layout="type_bsnd",
        calc_type="calc_type_default" if merge else "calc_type_first_ring",
        output=out, softmax_lse=lse)
