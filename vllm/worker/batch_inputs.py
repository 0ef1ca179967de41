"""Flattening one step's scheduled requests into model inputs and attention metadata."""
from typing import NamedTuple

import numpy as np
import torch

from vllm.attention.backend import CommonAttentionMetadata
from vllm.worker.request_state import CachedRequestState


class BatchInputs(NamedTuple):
    req_ids: list[str]  # decodes first
    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    attn_metadata: CommonAttentionMetadata
    logits_indices: torch.Tensor  # (num_sampling,) rows of hidden states to sample from
    sampling_req_ids: list[str]


def order_decodes_first(num_scheduled: dict[str, int]) -> tuple[list[str], int]:
    decodes = [req_id for req_id, n in num_scheduled.items() if n == 1]
    others = [req_id for req_id, n in num_scheduled.items() if n != 1]
    return decodes + others, len(decodes)


def build_batch_inputs(states: dict[str, CachedRequestState], num_scheduled: dict[str, int],
                       block_size: int) -> BatchInputs:
    req_ids, num_decodes = order_decodes_first(num_scheduled)
    num_reqs = len(req_ids)
    query_lens = np.fromiter((num_scheduled[r] for r in req_ids), np.int64, num_reqs)
    query_start = np.zeros(num_reqs + 1, np.int64)
    np.cumsum(query_lens, out=query_start[1:])
    num_tokens = int(query_start[-1])
    max_blocks = max(len(states[r].block_ids) for r in req_ids)
    block_table = np.zeros((num_reqs, max_blocks), np.int32)
    input_ids = np.empty(num_tokens, np.int64)
    positions = np.empty(num_tokens, np.int64)
    seq_lens = np.empty(num_reqs, np.int64)
    logits_indices, sampling_req_ids = [], []
    for i, req_id in enumerate(req_ids):
        state = states[req_id]
        start, end = state.num_computed_tokens, state.num_computed_tokens + int(query_lens[i])
        out_start, out_end = int(query_start[i]), int(query_start[i + 1])
        input_ids[out_start:out_end] = state.token_slice(start, end)
        positions[out_start:out_end] = np.arange(start, end)
        block_table[i, :len(state.block_ids)] = state.block_ids
        seq_lens[i] = end
        if end >= state.num_tokens:
            logits_indices.append(out_end - 1)
            sampling_req_ids.append(req_id)
    slot_mapping = _slot_mapping(block_table, query_start, positions, block_size)
    metadata = CommonAttentionMetadata(
        num_actual_tokens=num_tokens, num_decodes=num_decodes,
        query_start_loc_list=query_start.tolist(), seq_lens_list=seq_lens.tolist(),
        query_start_loc=torch.from_numpy(query_start.astype(np.int32)),
        seq_lens=torch.from_numpy(seq_lens.astype(np.int32)),
        block_table=torch.from_numpy(block_table),
        slot_mapping=torch.from_numpy(slot_mapping))
    return BatchInputs(req_ids, torch.from_numpy(input_ids), torch.from_numpy(positions),
                       metadata, torch.tensor(logits_indices, dtype=torch.int64),
                       sampling_req_ids)


def _slot_mapping(block_table: np.ndarray, query_start: np.ndarray, positions: np.ndarray,
                  block_size: int) -> np.ndarray:
    query_lens = np.diff(query_start)
    row_of_token = np.repeat(np.arange(len(query_lens)), query_lens)  # (T,)
    block_ids = block_table[row_of_token, positions // block_size].astype(np.int64)  # (T,)
    return block_ids * block_size + positions % block_size
