"""Streaming (name, tensor) pairs out of a Hugging Face folder's *.safetensors files."""
import json
import os
from collections.abc import Iterator

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(folder: str) -> list[str]:
    """The weight files of `folder`: those its index names, else every *.safetensors."""
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index_path):
        names = sorted(set(_read_index(index_path).values()))
    else:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not names:
        others = [n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {', '.join(sorted(others))}; only safetensors is supported)" \
            if others else ""
        raise FileNotFoundError(f"no *.safetensors weights in {folder}{hint}")
    paths = [os.path.join(folder, n) for n in names]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} named in {INDEX_FILE} does not exist")
    return paths


def _read_index(index_path: str) -> dict[str, str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the weight index {index_path}: {e}") from e
    if not isinstance(weight_map, dict):
        raise ValueError(f"weight_map in {index_path} is not an object")
    return weight_map


def iterate_safetensors(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of the folder's weight files, read one at a time (files are
    listed and checked now)."""
    return _iterate_files(safetensors_files(folder))


def _iterate_files(paths: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in paths:
        yield from _iterate_file(path)


def _iterate_file(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        handle = safe_open(path, framework="pt")
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read weights file {path} (corrupt or not safetensors): "
                         f"{e}") from e
    with handle as f:
        for name in f.keys():
            try:
                tensor = f.get_tensor(name)
            except Exception as e:
                raise ValueError(f"cannot read tensor {name!r} from {path}: {e}") from e
            yield name, tensor
