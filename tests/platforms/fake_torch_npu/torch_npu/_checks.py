"""Strict argument checks shared by the fake ops: any deviation from the documented
contract raises FakeNpuContractError, naming the op and the argument."""
import torch

from fake_device import is_device

HALF_TYPES = (torch.float16, torch.bfloat16)


class FakeNpuContractError(ValueError):
    pass


def fail(op: str, message: str):
    raise FakeNpuContractError(f"{op}: {message}")


def tensor(op: str, name: str, value, dims: int, dtypes=None, contiguous: bool = True,
           host: bool = False, device: bool = False) -> torch.Tensor:
    """host: must stay on the host (never marked); device: must have crossed to the device
    (marked by the metadata's `.on()`, fake_device.DeviceTensor)."""
    if not isinstance(value, torch.Tensor):
        fail(op, f"{name} must be a Tensor, got {type(value).__name__}")
    if value.dim() != dims:
        fail(op, f"{name} must have {dims} dims, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        fail(op, f"{name} dtype must be one of {dtypes}, got {value.dtype}")
    if contiguous and not value.is_contiguous():
        fail(op, f"{name} must be contiguous (ND format)")
    if host and (value.device.type != "cpu" or is_device(value)):
        fail(op, f"{name} must be a host (CPU) tensor, got a device one")
    if device and not is_device(value):
        fail(op, f"{name} must be a device tensor, got a host one")
    return value


def same(op: str, what: str, a, b) -> None:
    if a != b:
        fail(op, f"{what}: {a} != {b}")


def integer(op: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        fail(op, f"{name} must be an int, got {type(value).__name__}")
    return value


def real(op: str, name: str, value) -> float:
    if not isinstance(value, float):
        fail(op, f"{name} must be a float, got {type(value).__name__}")
    return value


def int_list(op: str, name: str, value, length: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        fail(op, f"{name} must be a list of {length} ints, got {value!r}")
    for item in value:
        integer(op, name, item)
    return list(value)


def heads(op: str, num_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        fail(op, f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")


def block_ids(op: str, block_table: torch.Tensor, row: int, seq_len: int, block_size: int,
              num_blocks: int) -> torch.Tensor:
    used = -(-seq_len // block_size)
    if used > block_table.shape[1]:
        fail(op, f"block_table row {row} has {block_table.shape[1]} columns, "
                 f"{used} needed for {seq_len} tokens")
    ids = block_table[row, :used].long()
    if bool(((ids < 0) | (ids >= num_blocks)).any()):
        fail(op, f"block_table row {row} names blocks outside [0, {num_blocks}): {ids.tolist()}")
    return ids
