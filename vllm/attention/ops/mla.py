"""Multi-head latent attention in plain PyTorch: writing latents into the paged cache,
expanding them into per-head keys and values, and attention over a context in chunks
(partial results merged by their log-sum-exp)."""
import torch

from vllm.attention.backend import MLADims


def write_latent(cache: torch.Tensor, slot_mapping: torch.Tensor, kv_c_normed: torch.Tensor,
                 k_pe: torch.Tensor) -> None:
    """cache: (num_blocks, block_size, latent); each token's [kv_c_normed, k_pe] goes to its
    slot (block_id * block_size + offset); negative slots (padding) are skipped."""
    latent = torch.cat([kv_c_normed, k_pe], dim=-1).to(cache.dtype)  # (T, latent)
    is_stored = slot_mapping >= 0  # (T,)
    if not bool(is_stored.all()):
        latent, slot_mapping = latent[is_stored], slot_mapping[is_stored]
    cache.view(-1, cache.shape[-1]).index_copy_(0, slot_mapping, latent)


def split_latent(latent: torch.Tensor, dims: MLADims) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, latent) cache rows -> kv_c_normed (N, kv_lora_rank), k_pe (N, rope dim)."""
    return latent.split([dims.kv_lora_rank, dims.qk_rope_head_dim], dim=-1)


def expand_latent(kv_b_proj, dims: MLADims, kv_c_normed: torch.Tensor, k_pe: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys (N, H, qk_head_dim) and values (N, H, v_head_dim) of N latents."""
    num_tokens = kv_c_normed.shape[0]
    kv = kv_b_proj(kv_c_normed).view(num_tokens, dims.num_heads, -1)  # (N, H, nope + v)
    k_nope, v = kv.split([dims.qk_nope_head_dim, dims.v_head_dim], dim=-1)
    k_rope = k_pe.unsqueeze(1).expand(num_tokens, dims.num_heads, -1)  # (N, H, rope)
    return torch.cat([k_nope, k_rope], dim=-1), v


def absorbed_weights(kv_b_weight: torch.Tensor, dims: MLADims
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_b_proj's weight as W_UK (H, nope, kv_lora_rank) and W_UV (H, v, kv_lora_rank),
    views: q_nope . (W_UK c) = (W_UK^T q_nope) . c and sum_j p_j W_UV c_j = W_UV sum_j p_j c_j."""
    per_head = kv_b_weight.view(dims.num_heads, -1, dims.kv_lora_rank)  # (H, nope + v, L)
    return per_head[:, :dims.qk_nope_head_dim], per_head[:, dims.qk_nope_head_dim:]


def absorb_query(kv_b_weight: torch.Tensor, dims: MLADims, q_nope: torch.Tensor) -> torch.Tensor:
    """(B, H, nope) -> W_UK^T q_nope per head, (B, H, kv_lora_rank)."""
    w_uk, _ = absorbed_weights(kv_b_weight, dims)  # (H, nope, L)
    return torch.matmul(q_nope.transpose(0, 1), w_uk).transpose(0, 1)


def project_values(kv_b_weight: torch.Tensor, dims: MLADims,
                   out_latent: torch.Tensor) -> torch.Tensor:
    """(B, H, kv_lora_rank) -> W_UV out_latent per head, (B, H, v)."""
    _, w_uv = absorbed_weights(kv_b_weight, dims)  # (H, v, L)
    return torch.matmul(out_latent.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (Lq, H, D); k: (Lk, H, D); v: (Lk, H, Dv). Returns the attention output
    (Lq, H, Dv) and each row's log-sum-exp of scores (Lq, H), both float32; causal: query i
    sees keys up to Lk - Lq + i."""
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale  # (H, Lq, Lk)
    if causal:
        num_q, num_k = q.shape[0], k.shape[0]
        q_pos = torch.arange(num_q, device=q.device).unsqueeze(1) + (num_k - num_q)
        hidden = torch.arange(num_k, device=q.device).unsqueeze(0) > q_pos  # (Lq, Lk)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (H, Lq)
    probs = torch.exp(scores - lse.unsqueeze(-1))  # (H, Lq, Lk)
    out = torch.einsum("hqk,khd->qhd", probs, v.float())  # (Lq, H, Dv)
    return out, lse.transpose(0, 1)


def merge_partial(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                  lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from each one's float32 output
    (Lq, H, Dv) and log-sum-exp (Lq, H)."""
    lse = torch.logaddexp(lse_a, lse_b)  # (Lq, H)
    weight_a = torch.exp(lse_a - lse).unsqueeze(-1)  # (Lq, H, 1)
    weight_b = torch.exp(lse_b - lse).unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse  # (Lq, H, Dv), (Lq, H)
