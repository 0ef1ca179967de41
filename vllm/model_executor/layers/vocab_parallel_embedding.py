"""Token embedding and LM head split across tensor-parallel ranks by vocabulary rows."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vllm.distributed.communication_op import (
    tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce)
from vllm.model_executor.layers.gguf_blocks import PackedLinear, packed_or_dense_linear
from vllm.model_executor.layers.weight_utils import (
    copy_checked, narrow_checked, new_parameter, tp_rank_and_size)


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary is split into equal, contiguous per-rank ranges.

    Each rank holds ceil(num_embeddings / tp_size) rows; the last rank's tail
    beyond the real vocabulary is zero padding.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, prefix: str = ""):
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"{prefix or 'embedding'}: sizes must be positive, got "
                             f"{num_embeddings} x {embedding_dim}")
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.prefix = prefix
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rows_per_partition = -(-num_embeddings // self.tp_size)
        self.vocab_start = min(self.tp_rank * self.rows_per_partition, num_embeddings)
        self.vocab_end = min(self.vocab_start + self.rows_per_partition, num_embeddings)
        self.weight = new_parameter(self.rows_per_partition, embedding_dim)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{self.prefix}: unexpected shard_id {shard_id!r}")
        rows = self.vocab_end - self.vocab_start
        shard = narrow_checked(loaded_weight, 0, self.num_embeddings,
                               self.vocab_start, rows, self.prefix)
        copy_checked(param.data[:rows], shard, self.prefix)
        param.data[rows:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)  # (num_tokens, embedding_dim)
        in_range = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = (input_ids - self.vocab_start) * in_range  # (num_tokens,)
        out = F.embedding(local_ids, self.weight)  # (num_tokens, embedding_dim)
        out.mul_(in_range.unsqueeze(-1))
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection to vocabulary logits, optionally tied to the input embedding."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False,
                 prefix: str = ""):
        super().__init__(num_embeddings, embedding_dim, prefix)
        self.bias: Optional[nn.Parameter] = None
        self.packed: Optional[PackedLinear] = None  # GGUF blocks of `weight`, if attached
        if bias:
            self.bias = new_parameter(self.rows_per_partition)
            self.bias.weight_loader = self.weight_loader

    def tie_weights(self, embedding: VocabParallelEmbedding) -> "ParallelLMHead":
        """Share `embedding`'s weight (same vocabulary split) as this head's weight."""
        if (embedding.num_embeddings, embedding.embedding_dim) != \
                (self.num_embeddings, self.embedding_dim):
            raise ValueError(f"{self.prefix}: cannot tie to an embedding of shape "
                             f"{embedding.num_embeddings} x {embedding.embedding_dim}")
        self.weight = embedding.weight
        return self

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, embedding_dim) hidden states -> (N, num_embeddings) float32 logits."""
        # (N, rows_per_partition)
        logits = packed_or_dense_linear(hidden_states, self.weight, self.bias, self.packed)
        if self.tp_size > 1:
            logits = tensor_model_parallel_all_gather(logits, dim=-1)
            logits = logits[:, :self.num_embeddings]  # (N, num_embeddings)
        return logits.float()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is not called directly; use compute_logits")
