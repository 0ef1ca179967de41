"""GGUF block-quantised copies of weights, used by the small-batch matmul kernel.

A GGUF checkpoint's Q4_1 / Q8_0 matrices dequantise exactly to the float32 weights the
model loads (see csrc/cpu/gguf_blocks.h). A decode step reads every weight once for a
handful of tokens, so the platform's kernel reads those blocks instead (0.6 and 1.06
bytes per weight instead of 4); prefill-sized batches keep the float32 GEMM.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

GGML_Q4_1 = 3
GGML_Q8_0 = 8
BLOCK_SIZE = 32
BLOCK_BYTES = {GGML_Q4_1: 20, GGML_Q8_0: 34}


def dequantize(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    """(rows, blocks, block bytes) uint8 -> (rows, blocks * 32) float32, as gguf-py does."""
    rows, num_blocks, _ = blocks.shape
    scale = _half(blocks[..., 0:2])  # (rows, blocks, 1)
    if qtype == GGML_Q4_1:
        low_bias = _half(blocks[..., 2:4])  # (rows, blocks, 1)
        packed = blocks[..., 4:20]  # (rows, blocks, 16)
        quants = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()  # (rows, blocks, 32)
        weights = scale * quants + low_bias
    elif qtype == GGML_Q8_0:
        quants = blocks[..., 2:34].contiguous().view(torch.int8).float()  # (rows, blocks, 32)
        weights = scale * quants
    else:
        raise ValueError(f"unsupported ggml type {qtype}")
    return weights.reshape(rows, num_blocks * BLOCK_SIZE)


def _half(two_bytes: torch.Tensor) -> torch.Tensor:
    return two_bytes.contiguous().view(torch.float16).float()


class BlockMatrix:
    """A (rows, cols) matrix held as GGUF blocks of 32 columns.

    It offers what the parallel layers' weight loaders use of a parameter and of a
    checkpoint tensor (`data`, `shape`, `dim`, `narrow`, `copy_`, row slices,
    `zero_`), so one loader fills both the float32 weight and this copy. Narrowing
    the columns must keep whole blocks.
    """

    def __init__(self, blocks: torch.Tensor, qtype: int):
        if qtype not in BLOCK_BYTES or blocks.dim() != 3 or blocks.dtype != torch.uint8 \
                or blocks.shape[2] != BLOCK_BYTES[qtype]:
            raise ValueError(f"not a GGUF block tensor of type {qtype}: "
                             f"{tuple(blocks.shape)} {blocks.dtype}")
        self.blocks = blocks  # (rows, cols / 32, block bytes) uint8
        self.qtype = qtype

    @classmethod
    def empty(cls, rows: int, cols: int, qtype: int) -> "BlockMatrix":
        if cols % BLOCK_SIZE:
            raise ValueError(f"{cols} columns are not whole blocks of {BLOCK_SIZE}")
        blocks = torch.zeros(rows, cols // BLOCK_SIZE, BLOCK_BYTES[qtype], dtype=torch.uint8)
        return cls(blocks, qtype)

    @property
    def data(self) -> "BlockMatrix":
        return self

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.blocks.shape[0], self.blocks.shape[1] * BLOCK_SIZE))

    def dim(self) -> int:
        return 2

    def narrow(self, dim: int, start: int, length: int) -> "BlockMatrix":
        if dim == 0:
            return BlockMatrix(self.blocks.narrow(0, start, length), self.qtype)
        if dim != 1 or start % BLOCK_SIZE or length % BLOCK_SIZE:
            raise ValueError(f"columns {start}..{start + length} cut GGUF blocks of "
                             f"{BLOCK_SIZE}")
        return BlockMatrix(self.blocks.narrow(1, start // BLOCK_SIZE, length // BLOCK_SIZE),
                           self.qtype)

    def split(self, sizes: list[int], dim: int = 0) -> list["BlockMatrix"]:
        if dim != 0:
            raise ValueError("BlockMatrix splits rows only")
        return [BlockMatrix(part, self.qtype) for part in self.blocks.split(sizes, dim=0)]

    def __getitem__(self, rows: slice) -> "BlockMatrix":
        if not isinstance(rows, slice):
            raise TypeError("BlockMatrix takes row slices only")
        return BlockMatrix(self.blocks[rows], self.qtype)

    def copy_(self, source: "BlockMatrix") -> "BlockMatrix":
        if not isinstance(source, BlockMatrix) or source.qtype != self.qtype:
            raise ValueError("GGUF block type mismatch")
        self.blocks.copy_(source.blocks)
        return self

    def zero_(self) -> "BlockMatrix":
        self.blocks.zero_()
        return self

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.blocks, self.qtype)


# The kernel computes in float32; bfloat16 batches are widened in and rounded back out.
PACKED_INPUT_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear:
    """A layer's weight as GGUF blocks, and the platform kernel that multiplies by them:
    `kernel(out, x, blocks, qtype, bias)` for batches of at most `max_tokens` rows."""

    def __init__(self, matrix: BlockMatrix, kernel: Callable, max_tokens: int):
        self.matrix = matrix
        self.kernel = kernel
        self.max_tokens = max_tokens

    def applies_to(self, x: torch.Tensor) -> bool:
        return x.dim() == 2 and x.shape[0] <= self.max_tokens and x.dtype in PACKED_INPUT_DTYPES

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        x32 = x.float().contiguous()  # (num_tokens, input columns), no copy when float32
        bias32 = None if bias is None else bias.float()
        out = x32.new_empty(x.shape[0], self.matrix.shape[0])  # (num_tokens, output rows)
        self.kernel(out, x32, self.matrix.blocks, self.matrix.qtype, bias32)
        return out.to(x.dtype)


def packed_or_dense_linear(x: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor],
                           packed: Optional[PackedLinear]) -> torch.Tensor:
    """x W^T + b: through the GGUF-block kernel when the layer has one and the batch is
    small, else the weight's panels (model_executor/layers/panel_weights.py) when the batch
    is in their range, else the library GEMM."""
    if packed is not None and packed.applies_to(x):
        return packed(x, bias)
    panels = getattr(weight, "panels", None)
    if panels is not None and panels.applies_to(x):
        return panels(x, bias)
    return F.linear(x, weight, bias)
