"""A layer's cache slots as the push connector moves them: (planes, n, units, size), whatever
the kind of cache (vllm.kv_shape.CacheUnits), through the attention backend's own copies."""
import torch

from vllm.kv_shape import LATENT, CacheUnits


class CacheIO:
    """Gathers and scatters one rank's units of a layer's cache for the KV transfer."""

    def __init__(self, backend, units: CacheUnits):
        self.backend = backend
        self.units = units

    def gather(self, kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The units this rank holds at the slots: (planes, n, units held, size), a copy."""
        if self.units.kind == LATENT:
            return self.backend.gather_latent(kv_cache, slots)[None, :, None]  # (1, n, 1, L)
        return self.backend.gather_kv(kv_cache, slots)  # (2, n, KVH, D)

    def scatter(self, kv_cache: torch.Tensor, slots: torch.Tensor, unit_start: int,
                payload: torch.Tensor) -> None:
        """Write payload (planes, n, units, size) into units from unit_start (local)."""
        if self.units.kind == LATENT:
            self.backend.scatter_latent(kv_cache, slots, payload[0, :, 0])  # (n, L)
        else:
            self.backend.scatter_kv(kv_cache, slots, unit_start, payload)

    def empty_payload(self, num_tokens: int, count: int, like: torch.Tensor) -> torch.Tensor:
        """Room for `count` units of num_tokens tokens, on like's device and dtype."""
        return torch.empty((self.units.planes, num_tokens, count, self.units.size),
                           dtype=like.dtype, device=like.device)
