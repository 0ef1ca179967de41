"""Telling a model folder from a GGUF file."""
import os


def split_gguf_path(path: str) -> tuple[str, str]:
    """(folder, file name) of a .gguf path, the form transformers' gguf_file wants."""
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)


def is_gguf_path(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


def check_model_path(path: str, what: str) -> None:
    """Raise a clear error unless `path` is an existing folder or .gguf file."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} path must be a non-empty string, got {path!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} path {path} does not exist")
    if not (os.path.isdir(path) or is_gguf_path(path)):
        raise ValueError(f"{what} path {path} is neither a folder nor a .gguf file")
