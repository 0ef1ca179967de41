"""Decode-only steps run as graphs, keyed by padded batch size.

The platform says how (Platform.decode_graph_mode): "capture" records one graph per padded
batch size over static buffers and replays it (CUDA graphs; all sizes recorded up front);
"compile" hands a step function to the platform's graph compiler (TorchAir on Ascend): it
takes the ids, positions and the backend's metadata tensors as arguments and enters the
forward context itself, so nothing that changes per step is read from Python globals (the
compiler would freeze such values and recompile when they change). A batch is padded up to
the next size by repeating its last request: the padded rows write the same KV bytes to the
same slot and their outputs are dropped.
"""
from typing import Callable, Optional

import torch

from vllm.attention.backend import CommonAttentionMetadata
from vllm.forward_context import set_forward_context


def batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to max_num_seqs."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return sizes + [max_num_seqs]


def padded_size(num_reqs: int, sizes: list[int]) -> Optional[int]:
    return next((s for s in sizes if s >= num_reqs), None)


def pad_decode_batch(input_ids: torch.Tensor, positions: torch.Tensor,
                     common: CommonAttentionMetadata, size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, CommonAttentionMetadata]:
    """A decode-only batch grown to `size` requests by repeating its last one."""
    extra = size - common.num_reqs

    def grow(t: torch.Tensor) -> torch.Tensor:  # (n, ...) -> (size, ...)
        return torch.cat([t, t[-1:].expand(extra, *t.shape[1:])]) if extra else t

    padded = CommonAttentionMetadata(
        num_actual_tokens=size, num_decodes=size, query_start_loc_list=list(range(size + 1)),
        seq_lens_list=common.seq_lens_list + common.seq_lens_list[-1:] * extra,
        query_start_loc=torch.arange(size + 1, dtype=torch.int32),
        seq_lens=grow(common.seq_lens), block_table=grow(common.block_table),
        slot_mapping=grow(common.slot_mapping))
    return grow(input_ids), grow(positions), padded


def is_decode_only(common: CommonAttentionMetadata) -> bool:
    return common.num_decodes == common.num_reqs


class CompiledDecodeRunner:
    """Decode steps through the platform's graph compiler, one graph per padded batch size.
    The backend gives `build_graph_metadata(common)` (host; `.on(device)` -> dict of device
    tensors) and `graph_metadata(inputs)` (the metadata the layers read, inside the graph)."""

    def __init__(self, model, backend, kv_caches: dict[str, torch.Tensor], max_num_seqs: int,
                 device: torch.device, compile_fn: Callable):
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.device = device
        self.sizes = batch_sizes(max_num_seqs)
        self.compiled = compile_fn(self._step, len(self.sizes))

    def _step(self, input_ids: torch.Tensor, positions: torch.Tensor,
              inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        metadata = self.backend.graph_metadata(inputs)
        with set_forward_context(metadata, self.kv_caches):
            return self.model(input_ids, positions)  # (B, hidden)

    def can_run(self, common: CommonAttentionMetadata) -> bool:
        return is_decode_only(common) and padded_size(common.num_reqs, self.sizes) is not None

    def run(self, input_ids, positions, common: CommonAttentionMetadata) -> torch.Tensor:
        size = padded_size(common.num_reqs, self.sizes)
        input_ids, positions, padded = pad_decode_batch(input_ids, positions, common, size)
        inputs = self.backend.build_graph_metadata(padded).on(self.device)  # H2D, outside
        hidden = self.compiled(input_ids.to(self.device), positions.to(self.device), inputs)
        return hidden[:common.num_actual_tokens]  # (T, hidden)


class CapturedDecodeRunner:
    """Decode steps replayed from graphs recorded once per padded batch size. Inputs and
    metadata live in static buffers the graphs read; each step copies into them."""

    def __init__(self, model, backend, kv_caches: dict[str, torch.Tensor], max_num_seqs: int,
                 max_blocks_per_seq: int, device: torch.device, capture_fn: Callable):
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.capture_fn = capture_fn
        self.sizes = batch_sizes(max_num_seqs)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)  # (N,)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)  # (N,)
        self.slots = torch.zeros(n, dtype=torch.int64, device=device)  # (N,)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)  # (N,)
        self.block_table = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32,
                                       device=device)  # (N, max_blocks)
        self.graphs: dict[int, Callable[[], torch.Tensor]] = {}

    def can_run(self, common: CommonAttentionMetadata) -> bool:
        return (is_decode_only(common) and padded_size(common.num_reqs, self.sizes) is not None
                and common.block_table.shape[1] <= self.block_table.shape[1])

    def run(self, input_ids, positions, common: CommonAttentionMetadata) -> torch.Tensor:
        size = padded_size(common.num_reqs, self.sizes)
        self._fill(*pad_decode_batch(input_ids, positions, common, size))
        replay = self.graphs.get(size)
        if replay is None:
            raise RuntimeError(f"no decode graph for batch size {size}: capture_all() "
                               f"must run before serving")
        return replay()[:common.num_actual_tokens]  # (T, hidden)

    def capture_all(self) -> None:
        """Record every padded size, largest first (later ones reuse its memory pool)."""
        with torch.inference_mode():
            for size in sorted(self.sizes, reverse=True):
                if size not in self.graphs:
                    self.graphs[size] = self._capture(size)

    def _fill(self, input_ids, positions, common: CommonAttentionMetadata) -> None:
        n, width = common.num_reqs, common.block_table.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slots[:n].copy_(common.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(common.seq_lens, non_blocking=True)
        self.block_table[:n, :width].copy_(common.block_table, non_blocking=True)

    def _capture(self, size: int) -> Callable[[], torch.Tensor]:
        # Python values are frozen into the graph: only the buffers may change per step.
        common = CommonAttentionMetadata(
            num_actual_tokens=size, num_decodes=size, query_start_loc_list=list(range(size + 1)),
            seq_lens_list=[0] * size,  # not read on the decode path
            query_start_loc=torch.arange(size + 1, dtype=torch.int32),
            seq_lens=self.seq_lens[:size], block_table=self.block_table[:size],
            slot_mapping=self.slots[:size])
        metadata = self.backend.build_metadata(common)

        def forward() -> torch.Tensor:
            with set_forward_context(metadata, self.kv_caches):
                return self.model(self.input_ids[:size], self.positions[:size])

        return self.capture_fn(forward)


def make_graph_runner(platform, vllm_config, model, kv_caches: dict[str, torch.Tensor],
                      device: torch.device):
    """The runner the platform asks for, or None to run every step eagerly."""
    mode = platform.decode_graph_mode(vllm_config)
    if mode is None:
        return None
    backend = platform.get_attn_backend_cls()
    max_num_seqs = vllm_config.scheduler_config.max_num_seqs
    if mode == "compile":
        return CompiledDecodeRunner(model, backend, kv_caches, max_num_seqs, device,
                                    platform.compile_decode)
    if mode == "capture":
        block_size = vllm_config.cache_config.block_size
        max_blocks = -(-vllm_config.model_config.max_model_len // block_size)
        runner = CapturedDecodeRunner(model, backend, kv_caches, max_num_seqs, max_blocks,
                                      device, platform.capture_graph)
        runner.capture_all()
        return runner
    raise ValueError(f"unknown decode graph mode {mode!r}")
