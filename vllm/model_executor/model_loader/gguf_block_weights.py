"""The GGUF blocks of a converted checkpoint: extracted once, attached to layers at load.

Conversion (vllm/transformers_utils/gguf_cache.py) keeps, in BLOCKS_FILE, the raw blocks
of each Q4_1 / Q8_0 matrix, under its Hugging Face name and in the converted tensor's row
order, but only when they dequantise bit for bit to that tensor. Loading feeds them
through the layers' own weight loaders (so tensor-parallel shards and fused projections
come out as for the dense weights), checks each layer's result against its dense
weight once more, and hands the layer a PackedLinear with the platform's kernel.
"""
import json
import os
from typing import Any, Optional

import torch
from torch import nn

from vllm.logger import init_logger
from vllm.model_executor.layers.gguf_blocks import (
    BLOCK_BYTES, BlockMatrix, PackedLinear)
from vllm.model_executor.models.weight_mapping import LLAMA_STACKED_PARAMS, to_param_name

logger = init_logger(__name__)
# In a subfolder, out of the way of loaders that read every *.safetensors of the folder.
BLOCKS_FILE = os.path.join("gguf_blocks", "blocks.safetensors")
_QTYPES_KEY = "ggml_types"


# ---- conversion ---------------------------------------------------------------------------
def extract_gguf_blocks(gguf_path: str, dense: dict[str, torch.Tensor]
                        ) -> dict[str, BlockMatrix]:
    """The supported block matrices of `gguf_path`, by the Hugging Face names of `dense`
    (the file's float32 tensors), rows in `dense`'s order; others are left out."""
    import gguf
    reader = gguf.GGUFReader(gguf_path)
    raw = {tensor.name: tensor for tensor in reader.tensors}
    name_map = _tensor_name_map(reader)
    found = {}
    for name, reference in dense.items():
        tensor = raw.get(name_map.get_name(name, try_suffixes=(".weight", ".bias"))
                         if name_map else None)
        if tensor is None or int(tensor.tensor_type) not in BLOCK_BYTES or reference.dim() != 2:
            continue
        qtype = int(tensor.tensor_type)
        blocks = torch.from_numpy(tensor.data.copy()).reshape(  # (rows, blocks, bytes)
            reference.shape[0], -1, BLOCK_BYTES[qtype])
        matrix = _in_reference_order(BlockMatrix(blocks, qtype), reference)
        if matrix is not None:
            found[name] = matrix
    return found


def _tensor_name_map(reader) -> Optional[Any]:
    import gguf
    field = reader.fields.get("general.architecture")
    if field is None:
        return None
    arch_name = bytes(field.parts[field.data[0]]).decode()
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    count = reader.fields.get(f"{arch_name}.block_count")
    if arch is None or count is None:
        return None
    return gguf.get_tensor_name_map(arch, int(count.parts[count.data[0]][0]))


def _in_reference_order(matrix: BlockMatrix, reference: torch.Tensor
                        ) -> Optional[BlockMatrix]:
    """`matrix` with its rows reordered to equal `reference` exactly (converters permute
    the rows of some projections), or None when no reordering does."""
    if matrix.shape != reference.shape:
        return None
    values = matrix.dequantize()  # (rows, cols)
    if torch.equal(values, reference):
        return matrix
    row_of = {values[i].numpy().tobytes(): i for i in range(values.shape[0])}
    order = [row_of.get(reference[i].numpy().tobytes()) for i in range(reference.shape[0])]
    if None in order:
        return None
    return BlockMatrix(matrix.blocks[torch.tensor(order)].contiguous(), matrix.qtype)


def save_gguf_blocks(folder: str, matrices: dict[str, BlockMatrix]) -> None:
    from safetensors.torch import save_file
    qtypes = {name: matrix.qtype for name, matrix in matrices.items()}
    os.makedirs(os.path.join(folder, os.path.dirname(BLOCKS_FILE)), exist_ok=True)
    save_file({name: matrix.blocks for name, matrix in matrices.items()},
              os.path.join(folder, BLOCKS_FILE), metadata={_QTYPES_KEY: json.dumps(qtypes)})


# ---- loading ------------------------------------------------------------------------------
def attach_gguf_blocks(model: nn.Module, folder: str, kernel: Optional[tuple]) -> int:
    """Give each layer whose weight `folder`'s block file covers a PackedLinear using
    `kernel` = (op, max tokens); returns how many layers got one. A head tied to the
    embedding shares the embedding's blocks; an embedding alone keeps none (it is
    only looked up)."""
    path = os.path.join(folder, BLOCKS_FILE)
    if kernel is None or not os.path.isfile(path):
        return 0
    modules = dict(model.named_modules())
    users_of: dict[int, list[nn.Module]] = {}  # id(weight) -> layers that multiply by it
    for module in modules.values():
        if hasattr(module, "packed"):
            users_of.setdefault(id(module.weight), []).append(module)
    packed = 0
    for module_name, matrix in _fill_block_matrices(modules, _read_gguf_blocks(path)).items():
        weight = modules[module_name].weight
        users = users_of.get(id(weight))
        if not users:
            continue
        # A bfloat16 model's weight is the blocks' values rounded; the kernel keeps them exact.
        if not torch.equal(matrix.dequantize().to(weight.dtype), weight.data):
            logger.info("%s: not all of its weight is in supported GGUF blocks; it stays "
                        "dense", module_name)
            continue
        for user in users:
            user.packed = PackedLinear(matrix, *kernel)
            packed += 1
    return packed


def _read_gguf_blocks(path: str):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as handle:
        qtypes = json.loads(handle.metadata()[_QTYPES_KEY])
        for name in handle.keys():
            yield name, BlockMatrix(handle.get_tensor(name), qtypes[name])


def _fill_block_matrices(modules: dict[str, nn.Module], named_blocks) -> dict[str, BlockMatrix]:
    """Each layer's BlockMatrix, filled by its own weight loader; layers that the block
    tensors cannot fill (mixed types in one fused weight, shards that cut blocks) are
    left out."""
    filled: dict[str, BlockMatrix] = {}
    refused: set[str] = set()
    for name, source in named_blocks:
        param_name, shard_id = to_param_name(name, LLAMA_STACKED_PARAMS)
        module_name, _, attr = param_name.rpartition(".")
        module = modules.get(module_name)
        if attr != "weight" or not hasattr(module, "weight_loader") or module_name in refused:
            continue
        try:
            target = filled.get(module_name) or BlockMatrix.empty(
                *module.weight.shape, source.qtype)
            filled[module_name] = target
            shard = () if shard_id is None else (shard_id,)
            module.weight_loader(target, source, *shard)
        except ValueError as error:
            logger.debug("%s stays float32: %s", module_name, error)
            refused.add(module_name)
            filled.pop(module_name, None)
    return filled
