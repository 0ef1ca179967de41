"""One adaptor per torch_npu op: the only place that spells their argument names.

A keyword renamed by a torch_npu release is a one-line change here. Argument names, shapes
and dtypes follow the op schemas of torch_npu 2.5.1 (Ascend Extension for PyTorch 7.0.0,
CANN 8.1.RC1); each adaptor names its source.
"""
from typing import Optional

import torch
import torch_npu


def reshape_and_cache(key: torch.Tensor,  # (T, KVH, D)
                      value: torch.Tensor,  # (T, KVH, D)
                      key_cache: torch.Tensor,  # (num_blocks, block_size, KVH, D)
                      value_cache: torch.Tensor,  # (num_blocks, block_size, KVH, D)
                      slots: torch.Tensor) -> None:  # (T,) int32 on the device
    # op-plugin ATB schema (torch_npu 2.5.1): _npu_reshape_and_cache(Tensor key, Tensor value,
    #   Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor slot_indices) -> ()
    # CANN ATB ReshapeAndCacheOperation: slotMapping [num_tokens] int32; same dtype for all.
    torch_npu._npu_reshape_and_cache(key=key, value=value, key_cache=key_cache,
                                     value_cache=value_cache, slot_indices=slots)


def flash_attention(query: torch.Tensor,  # (T, H, D), prompts packed
                    key: torch.Tensor,  # (T, KVH, D)
                    value: torch.Tensor,  # (T, KVH, D)
                    mask: torch.Tensor,  # (S, S) query dtype, S >= the longest prompt
                    seq_lens: torch.Tensor,  # (B,) int32 on the host
                    scale: float, num_heads: int, num_kv_heads: int,
                    out: torch.Tensor) -> None:  # (T, H, D), written
    # op-plugin ATB schema (torch_npu 2.5.1): _npu_flash_attention(Tensor query, Tensor key,
    #   Tensor value, Tensor mask, Tensor seq_len, float scale_value, int num_heads,
    #   int num_kv_heads, Tensor(a!) out) -> ()
    # CANN ATB SelfAttentionOperation, calcType PA_ENCODER: seqlen [batch] int32 on the CPU.
    torch_npu._npu_flash_attention(query=query, key=key, value=value, mask=mask,
                                   seq_len=seq_lens, scale_value=scale, num_heads=num_heads,
                                   num_kv_heads=num_kv_heads, out=out)


def paged_attention(query: torch.Tensor,  # (B, H, D), one token per sequence
                    key_cache: torch.Tensor,  # (num_blocks, block_size, KVH, D)
                    value_cache: torch.Tensor,  # (num_blocks, block_size, KVH, D)
                    block_table: torch.Tensor,  # (B, max_blocks) int32 on the device
                    context_lens: torch.Tensor,  # (B,) int32 on the host
                    scale: float, num_heads: int, num_kv_heads: int,
                    out: torch.Tensor) -> None:  # (B, H, D), written
    # op-plugin ATB schema (torch_npu 2.5.1): _npu_paged_attention(Tensor query,
    #   Tensor key_cache, Tensor value_cache, int num_kv_heads, int num_heads,
    #   float scale_value, Tensor block_table, Tensor context_lens, Tensor(a!) out) -> ()
    # CANN ATB PagedAttentionOperation: contextLens [batch] int32 on the CPU.
    torch_npu._npu_paged_attention(query=query, key_cache=key_cache, value_cache=value_cache,
                                   num_kv_heads=num_kv_heads, num_heads=num_heads,
                                   scale_value=scale, block_table=block_table,
                                   context_lens=context_lens, out=out)


def fused_infer_attention(query: torch.Tensor,  # (B, S, H, D), each request's rows padded
                          key_cache: torch.Tensor,  # (num_blocks, block_size, KVH * D)
                          value_cache: torch.Tensor,  # (num_blocks, block_size, KVH * D)
                          block_table: torch.Tensor,  # (B, max_blocks) int32
                          query_lens: list[int],  # (B,)
                          seq_lens: list[int],  # (B,) cached + new tokens
                          causal_mask: Optional[torch.Tensor],  # (2048, 2048) bool or None
                          scale: float, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    # torch_npu.npu_fused_infer_attention_score, Ascend Extension for PyTorch 7.0.0 API
    # reference (torch_npu 2.5.1): the softmax scale is the keyword `scale` (6.0.x references
    # named it `scale_value`). Page attention: block_table int32, block_size a multiple of 128
    # in [128, 512], kv cache (blocknum, blocksize, H) for BSND queries, actual_seq_lengths_kv
    # required. sparse_mode 3 = rightDownCausal with the optimised 2048 x 2048 mask; with one
    # query token per request (decode) no mask is needed (sparse_mode 0).
    block_size = key_cache.shape[1]
    sparse_mode = 0 if causal_mask is None else 3
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query, key_cache, value_cache, atten_mask=causal_mask, block_table=block_table,
        actual_seq_lengths=query_lens, actual_seq_lengths_kv=seq_lens, num_heads=num_heads,
        num_key_value_heads=num_kv_heads, scale=scale, input_layout="BSND", sparse_mode=sparse_mode,
        block_size=block_size)
    return out  # (B, S, H, D)


def fused_infer_attention_graph(query: torch.Tensor,  # (B, 1, H, D), one token per request
                                key_cache: torch.Tensor,  # (num_blocks, block_size, KVH * D)
                                value_cache: torch.Tensor,  # (num_blocks, block_size, KVH * D)
                                block_table: torch.Tensor,  # (B, max_blocks) int32, device
                                seq_lens: torch.Tensor,  # (B,) int64, device
                                scale: float, num_heads: int,
                                num_kv_heads: int) -> torch.Tensor:
    # TorchAir's own npu_fused_infer_attention_score (TorchAir user guide, "custom ops":
    # torchair.ops.npu_fused_infer_attention_score): the torch_npu schema with
    # actual_seq_lengths / actual_seq_lengths_kv as Tensors, so sequence lengths are graph
    # inputs instead of SymInt constants; graph mode only (it refuses to run eagerly).
    # Decode: one query token per request, no mask (sparse_mode 0).
    import torchair
    query_lens = torch.ones_like(seq_lens)  # (B,) int64
    out, _ = torchair.ops.npu_fused_infer_attention_score(
        query, key_cache, value_cache, atten_mask=None, block_table=block_table,
        actual_seq_lengths=query_lens, actual_seq_lengths_kv=seq_lens, num_heads=num_heads,
        num_key_value_heads=num_kv_heads, scale=scale, input_layout="BSND", sparse_mode=0,
        block_size=key_cache.shape[1])
    return out  # (B, 1, H, D)


def scatter_nd_update(cache: torch.Tensor,  # (num_blocks, block_size, KVH, D), the cache
                      indices: torch.Tensor,  # (T, 2) int64: (block id, offset in block)
                      updates: torch.Tensor) -> None:  # (T, KVH, D)
    # torch_npu.npu_scatter_nd_update_(Tensor(a!) input, Tensor indices, Tensor updates)
    # -> Tensor(a!), torch_npu 2.5.1 API reference: indices (..., K) address the first K dims
    # of input. The in-place KV write TorchAir graphs can hold (the ATB ops run eagerly).
    torch_npu.npu_scatter_nd_update_(cache, indices, updates)
