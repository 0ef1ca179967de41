"""The CPU MLA implementation against a plain-PyTorch reference written per head and in float64:
absorbed decodes, expanded prefills (with and without a cached context), the chunked-context
prefill, and the batch-invariant path (each token the same bits alone as in a batch)."""
import os
import sys

import pytest
import torch
from torch import nn

from vllm.attention.backend import MLADims
from vllm.attention.backends.cpu import CPUAttentionBackend
from vllm.attention.ops.paged_attention import HAS_CPU_KERNEL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "platforms"))
from attn_cases import make_case  # noqa: E402
from test_cpu_attention_invariant import one_token_step  # noqa: E402

DIMS = MLADims(num_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
               v_head_dim=12)
SCALE = 0.3
# (cached tokens, new tokens) per request, decodes first
DECODES = [(9, 1), (40, 1), (0, 1), (17, 1)]
MIXED = [(5, 1), (0, 7), (13, 6), (33, 4)]


class MLACase:
    """A batch's metadata, a latent cache with the cached prefixes filled, and random new
    tokens (queries, latents) for DIMS."""

    def __init__(self, requests, block_size: int = 8, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        case = make_case(requests, num_heads=DIMS.num_heads, num_kv_heads=1,
                         head_size=DIMS.latent_size, block_size=block_size, seed=seed)
        self.common = case.common
        self.cache = case.kv_cache[0, :, :, 0].contiguous()  # (blocks, block_size, latent)
        total = self.common.num_actual_tokens
        self.q = torch.randn(total, DIMS.num_heads, DIMS.qk_head_dim, generator=gen)
        self.kv_c = torch.randn(total, DIMS.kv_lora_rank, generator=gen)
        self.k_pe = torch.randn(total, DIMS.qk_rope_head_dim, generator=gen)
        rows = DIMS.num_heads * (DIMS.qk_nope_head_dim + DIMS.v_head_dim)
        self.kv_b_proj = nn.Linear(DIMS.kv_lora_rank, rows, bias=False)
        with torch.no_grad():
            self.kv_b_proj.weight.copy_(0.2 * torch.randn(rows, DIMS.kv_lora_rank, generator=gen))

    def run(self, impl=None, common=None, tokens=slice(None), cache=None):
        """Our output (T, H, v) and the cache after the step (on a copy of `cache`, by
        default the case's)."""
        impl = impl or self.impl()
        cache = (self.cache if cache is None else cache).clone()
        with torch.no_grad():
            out = impl.forward(self.q[tokens], self.kv_c[tokens], self.k_pe[tokens], cache,
                               common or self.common)
        return out, cache

    def impl(self):
        return CPUAttentionBackend.mla_impl_cls(DIMS, SCALE, self.kv_b_proj)

    def reference(self, cache_after: torch.Tensor) -> torch.Tensor:
        """Per request and head: keys and values expanded from every cached latent, causal
        softmax in float64."""
        outs = []
        common = self.common
        for r in range(common.num_reqs):
            start, end = common.query_start_loc_list[r], common.query_start_loc_list[r + 1]
            seq_len = common.seq_lens_list[r]
            latents = torch.stack([slot_row(cache_after, common.block_table[r], pos)
                                   for pos in range(seq_len)]).double()  # (L, latent)
            outs.append(reference_attention(self.q[start:end].double(), latents,
                                            self.kv_b_proj.weight.detach().double(),
                                            seq_len - (end - start)))
        return torch.cat(outs).float()


def slot_row(cache: torch.Tensor, block_row: torch.Tensor, pos: int) -> torch.Tensor:
    block_size = cache.shape[1]
    return cache[int(block_row[pos // block_size]), pos % block_size]


def reference_attention(q, latents, kv_b_weight, num_cached) -> torch.Tensor:
    """q (n, H, nope + rope), latents (L, kv_lora_rank + rope) -> (n, H, v)."""
    rank, nope = DIMS.kv_lora_rank, DIMS.qk_nope_head_dim
    kv_c, k_pe = latents[:, :rank], latents[:, rank:]
    out = torch.empty(q.shape[0], DIMS.num_heads, DIMS.v_head_dim, dtype=torch.float64)
    per_head = nope + DIMS.v_head_dim
    for h in range(DIMS.num_heads):
        w = kv_b_weight[h * per_head:(h + 1) * per_head]  # (nope + v, rank)
        keys = torch.cat([kv_c @ w[:nope].T, k_pe], dim=1)  # (L, nope + rope)
        values = kv_c @ w[nope:].T  # (L, v)
        for i in range(q.shape[0]):
            visible = num_cached + i + 1
            scores = keys[:visible] @ q[i, h] * SCALE  # (visible,)
            out[i, h] = torch.softmax(scores, dim=0) @ values[:visible]
    return out


def written_rows(case: MLACase, cache_after: torch.Tensor) -> torch.Tensor:
    slots = case.common.slot_mapping
    return cache_after.view(-1, DIMS.latent_size)[slots]  # (T, latent)


@pytest.mark.parametrize("requests", [DECODES, MIXED], ids=["decodes", "mixed"])
def test_matches_reference_and_writes_the_latent(requests):
    case = MLACase(requests)
    out, cache = case.run()
    torch.testing.assert_close(written_rows(case, cache), torch.cat([case.kv_c, case.k_pe], 1))
    torch.testing.assert_close(out, case.reference(cache), atol=1e-5, rtol=1e-4)


def test_absorbed_decode_and_expanded_prefill_agree():
    """The same query token over the same cached context: once as a decode (kv_b_proj
    absorbed), once as a one-token chunk of a prefill (latents expanded)."""
    case = MLACase([(21, 3)])
    as_prefill, cache = case.run()
    token = 2
    step = one_token_step(case.common, token)
    as_decode, _ = case.run(common=step, tokens=slice(token, token + 1), cache=cache)
    assert step.num_decodes == 1
    step.num_decodes = 0  # the same step again, routed to the expanded path
    as_chunk, _ = case.run(common=step, tokens=slice(token, token + 1), cache=cache)
    torch.testing.assert_close(as_decode[0], as_prefill[token], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(as_decode[0], as_chunk[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 64])
def test_chunked_context_prefill_matches_one_shot(chunk_tokens):
    case = MLACase(MIXED, seed=3)
    one_shot, _ = case.run()
    impl = case.impl()
    impl.enable_chunked_context_prefill()
    impl.context_chunk_tokens = chunk_tokens
    chunked, cache = case.run(impl)
    torch.testing.assert_close(chunked, one_shot, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, case.reference(cache), atol=1e-5, rtol=1e-4)


@pytest.mark.identity
@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="needs the CPU kernels (dense_linear)")
def test_batch_invariant_path_is_the_same_bits_alone():
    case = MLACase(MIXED, seed=5)
    impl = case.impl()
    impl.make_batch_invariant()
    batched, cache = case.run(impl)
    torch.testing.assert_close(batched, case.reference(cache), atol=1e-5, rtol=1e-4)
    for token in range(case.common.num_actual_tokens):
        alone, _ = case.run(impl, one_token_step(case.common, token),
                            slice(token, token + 1), cache)
        assert torch.equal(alone[0], batched[token]), token
