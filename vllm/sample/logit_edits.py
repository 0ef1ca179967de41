"""Sparse additive edits to a batch of logits (min_tokens blocking, logit_bias)."""

from typing import NamedTuple

import torch


class LogitEdits(NamedTuple):
    """Add ``values[i]`` to ``logits[rows[i], cols[i]]``; -inf blocks a token."""

    rows: torch.Tensor  # (N,) int64
    cols: torch.Tensor  # (N,) int64
    values: torch.Tensor  # (N,) float32

    @classmethod
    def from_entries(cls, entries: list[tuple[int, int, float]]) -> "LogitEdits | None":
        """Build from (row, token_id, value) triples; None when there are none."""
        if not entries:
            return None
        rows, cols, values = zip(*entries)
        return cls(
            rows=torch.tensor(rows, dtype=torch.int64),  # (N,)
            cols=torch.tensor(cols, dtype=torch.int64),  # (N,)
            values=torch.tensor(values, dtype=torch.float32),  # (N,)
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits`` with the edits added (the input is left as is)."""
        return logits.index_put((self.rows, self.cols), self.values, accumulate=True)  # (B, V)
