"""Contracts every attention backend implements."""
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass
class CommonAttentionMetadata:
    """Device-independent description of one batch, built by the model runner.

    Requests are ordered decodes first (query_len == 1), then prefills and chunks.
    """
    num_actual_tokens: int
    num_decodes: int
    query_start_loc_list: list[int]  # (B+1,)
    seq_lens_list: list[int]  # (B,) context length after this step
    query_start_loc: torch.Tensor  # (B+1,) int32
    seq_lens: torch.Tensor  # (B,) int32
    block_table: torch.Tensor  # (B, max_blocks_per_seq) int32
    slot_mapping: torch.Tensor  # (T,) int64

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_list)

    @functools.cached_property
    def per_token(self) -> "PerTokenView":
        """Each scheduled token as a sequence of its own, ending at that token."""
        query_lens = self.query_start_loc[1:] - self.query_start_loc[:-1]  # (B,)
        request = torch.repeat_interleave(
            torch.arange(self.num_reqs, device=query_lens.device), query_lens)  # (T,)
        token = torch.arange(request.shape[0], device=query_lens.device)  # (T,)
        tokens_after = self.query_start_loc[1:].long()[request] - 1 - token  # (T,)
        seq_lens = self.seq_lens.long()[request] - tokens_after  # (T,)
        return PerTokenView(self.block_table.index_select(0, request),
                            seq_lens.to(self.seq_lens.dtype))


class PerTokenView(NamedTuple):
    """Per-token block-table rows and context lengths (the token itself included)."""
    block_table: torch.Tensor  # (T, max_blocks_per_seq) int32
    seq_lens: torch.Tensor  # (T,) int32


class AttentionImpl(ABC):
    """Computes attention for one layer and writes the new tokens' K/V into the cache."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int):
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, metadata) -> torch.Tensor:
        """q: (T, H, D); k, v: (T, KVH, D); returns (T, H, D)."""

    def make_batch_invariant(self) -> None:
        """From now on compute every query token in one fixed order, whatever else is in
        the batch and whether its context was computed in this step (VLLM_BATCH_INVARIANT)."""
        raise NotImplementedError(f"{type(self).__name__} has no batch-invariant path")


class MLADims(NamedTuple):
    """The sizes of one rank's multi-head latent attention (DeepSeek V2/V3)."""
    num_heads: int  # this rank's query heads
    kv_lora_rank: int  # the latent each token's keys and values are expanded from
    qk_nope_head_dim: int
    qk_rope_head_dim: int  # the rotated part, one shared key per token
    v_head_dim: int

    @property
    def latent_size(self) -> int:
        """Values per token in the cache: [kv_c_normed (kv_lora_rank), k_pe (rope dim)]."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class MLAAttentionImpl(ABC):
    """Multi-head latent attention for one layer over a cache of latents.

    The cache holds one row per token, [kv_c_normed, k_pe] (MLADims.latent_size values),
    the same on every tensor-parallel rank. `kv_b_proj` (a linear layer whose weight is
    (num_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank), this rank's heads) expands
    a latent into each head's key (no-rope part) and value; an implementation may instead
    absorb it into the query and the output.
    """

    def __init__(self, dims: MLADims, scale: float, kv_b_proj):
        self.dims = dims
        self.scale = scale
        self.kv_b_proj = kv_b_proj

    @abstractmethod
    def forward(self, q: torch.Tensor, kv_c_normed: torch.Tensor, k_pe: torch.Tensor,
                kv_cache: torch.Tensor, metadata) -> torch.Tensor:
        """q: (T, H, qk_head_dim), its rope part rotated; kv_c_normed: (T, kv_lora_rank);
        k_pe: (T, rope dim), rotated. Writes the new tokens' latents into their slots;
        returns (T, H, v_head_dim)."""

    def make_batch_invariant(self) -> None:
        """As AttentionImpl.make_batch_invariant."""
        raise NotImplementedError(f"{type(self).__name__} has no batch-invariant path")

    def enable_chunked_context_prefill(self) -> None:
        """From now on a prefill over cached tokens expands their latents a bounded chunk at
        a time (--additional-config '{"chunked_prefill_for_mla": true}')."""
        raise NotImplementedError(f"{type(self).__name__} has no chunked context prefill")


class AttentionBackend(ABC):
    """A family of attention kernels and the KV-cache layout they share."""
    name: str
    impl_cls: type[AttentionImpl]
    mla_impl_cls: Optional[type[MLAAttentionImpl]] = None  # None: MLA models are refused
    latent_transfer = False  # gather_latent / scatter_latent serve its MLA cache (tested)

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        """Shape of one layer's KV cache tensor; the default layout, which the gather/scatter
        defaults below serve, is (2, num_blocks, block_size, KVH, D)."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    def get_mla_cache_shape(num_blocks: int, block_size: int,
                            latent_size: int) -> tuple[int, ...]:
        """Shape of one MLA layer's cache tensor: one latent row per slot."""
        return (num_blocks, block_size, latent_size)

    @staticmethod
    def build_metadata(common: CommonAttentionMetadata):
        """Turn the common description into this backend's metadata."""
        return common

    # What the platform asks of its backend (the platform never imports a backend).
    @staticmethod
    def preferred_block_size() -> Optional[int]:
        """The block size this backend needs for its fastest kernels; None: any."""
        return None

    @staticmethod
    def can_capture_decode(block_size: int) -> bool:
        """Whether a decode step over this backend may be recorded as a graph."""
        return True

    # KV transfer between instances. The defaults serve the (2, num_blocks, block_size,
    # KVH, D) layout; backends with another layout override both.
    @staticmethod
    def gather_kv(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Keys and values of the given cache slots: (2, n, KVH, D), a copy."""
        flat = kv_cache.flatten(1, 2)  # (2, num_slots, KVH, D), a view
        return flat.index_select(1, slots)

    @staticmethod
    def scatter_kv(kv_cache: torch.Tensor, slots: torch.Tensor, head_start: int,
                   kv: torch.Tensor) -> None:
        """Write kv (2, n, h, D) into heads [head_start, head_start + h) of the slots."""
        flat = kv_cache.flatten(1, 2)  # (2, num_slots, KVH, D), a view
        flat[:, slots, head_start:head_start + kv.shape[2]] = kv

    # The MLA latent cache, in the get_mla_cache_shape layout; backends with another
    # layout override both.
    @staticmethod
    def gather_latent(latent_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The latents of the given cache slots: (n, latent), a copy."""
        return latent_cache.flatten(0, 1).index_select(0, slots)  # (n, latent)

    @staticmethod
    def scatter_latent(latent_cache: torch.Tensor, slots: torch.Tensor,
                       latents: torch.Tensor) -> None:
        """Write latents (n, latent) into the slots."""
        latent_cache.flatten(0, 1)[slots] = latents  # a view of (num_slots, latent)
