"""(name, tensor) pairs of a .gguf file, dequantised and renamed to Hugging Face names."""
from collections.abc import Iterator
from typing import Any

import torch

GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FileNotFoundError(f"cannot open GGUF file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")


class HFNameTemplate:
    """What load_gguf_checkpoint reads of `model_to_load` to map GGUF tensor names to
    Hugging Face ones: the config and the parameter names, here without child
    modules (it would otherwise rebuild the name map once per submodule: seconds)."""

    def __init__(self, hf_config: Any):
        from transformers import AutoModelForCausalLM
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        self.config = model.config
        self._state_dict = model.state_dict()  # meta tensors: names only

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state_dict

    def named_children(self) -> list:
        return []


def iterate_gguf(path: str, hf_config: Any, dtype: torch.dtype
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """The file's tensors under Hugging Face names, converted to `dtype` (the
    magic is checked now, the tensors are read on first use)."""
    check_gguf_file(path)
    return _read_gguf(path, hf_config, dtype)


def _read_gguf(path: str, hf_config: Any, dtype: torch.dtype
               ) -> Iterator[tuple[str, torch.Tensor]]:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    try:
        parsed = load_gguf_checkpoint(path, return_tensors=True,
                                      model_to_load=HFNameTemplate(hf_config),
                                      torch_dtype=dtype)
    except Exception as e:
        raise ValueError(f"cannot read GGUF file {path}: {e}") from e
    tensors: dict[str, torch.Tensor] = parsed["tensors"]
    del parsed
    while tensors:
        name = next(iter(tensors))
        yield name, tensors.pop(name)
