"""Per-row histograms of token ids, used by the penalties."""

import torch


def count_tokens(token_lists: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Return (len(token_lists), vocab_size) int32 counts of each token id per row."""
    num_rows = len(token_lists)
    width = max((len(tokens) for tokens in token_lists), default=0)
    pad = vocab_size  # lands in an extra column that is cut off below
    padded = [list(tokens) + [pad] * (width - len(tokens)) for tokens in token_lists]
    ids = torch.tensor(padded, dtype=torch.int64).reshape(num_rows, width)  # (B, L)
    counts = torch.zeros(num_rows, vocab_size + 1, dtype=torch.int32)  # (B, V + 1)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]  # (B, V)
