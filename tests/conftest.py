"""Shared fixtures: the demo model (GGUF and a converted safetensors copy) and tiny models."""
import ctypes
import gc
import json
import os
from pathlib import Path

import pytest
import torch

from vllm.demo_model import demo_model_path
from vllm.platforms.cpu import AUTO_DTYPE_ENV

# The suite's references are float32: `--dtype auto` stays float32 on CPUs with fast
# bfloat16 too, in this process and the servers it starts (bfloat16 has its own tests).
os.environ.setdefault(AUTO_DTYPE_ENV, "float32")
TESTS_DIR = Path(__file__).resolve().parent


def _release_freed_memory() -> None:
    """Hands the memory of dropped engines and models back to the OS (glibc keeps freed
    heap pages otherwise): one test process grew to ~10 GiB over the suite, two of them
    (`-n 2`) ran a 24 GiB machine out of memory; with this each returns to ~0.5 GiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# The longest files, longest first (measured: `--durations` of full runs, 2026-12-07; the
# aarch64 cross-build takes ~6 minutes on an AVX2 machine).
LONGEST_FILES = ("platforms/test_aarch64_kernels.py", "engine/test_batching_invariance.py",
                 "engine/test_deepseek_engine.py", "disagg/test_pd_tensor_parallel.py",
                 "benchmarks/test_pd_vs_colocated_e2e.py", "disagg/test_pd_chaos.py",
                 "engine/test_hf_parity.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, then files with slow tests, then files of identity tests,
    then the rest (each group in its own order): with `-n 2 --dist loadfile` whole files go
    to whichever process is free, so a long file collected last would run alone at the end
    while the other process idles."""
    def rank(path) -> tuple[int, int]:
        relative = path.relative_to(TESTS_DIR).as_posix() if path.is_relative_to(TESTS_DIR) \
            else ""
        if relative in LONGEST_FILES:
            return 0, LONGEST_FILES.index(relative)
        marks = file_marks.get(path, set())
        return (1 if "slow" in marks else 2 if "identity" in marks else 3), 0
    file_marks: dict = {}
    for item in items:
        file_marks.setdefault(item.path, set()).update(mark.name for mark in item.iter_markers())
    items.sort(key=lambda item: rank(item.path))


@pytest.fixture(autouse=True, scope="module")
def release_memory_after_each_module():
    yield
    _release_freed_memory()


@pytest.fixture(scope="session")
def demo_gguf() -> str:
    return demo_model_path()


@pytest.fixture(scope="session")
def demo_model_dir(demo_gguf) -> str:
    """The demo GGUF converted (once, cached on disk) into a safetensors folder."""
    from vllm.transformers_utils.gguf_cache import resolve_model_source
    folder = resolve_model_source(demo_gguf)
    assert os.path.isdir(folder), "the GGUF conversion cache is disabled"
    return folder


def make_tiny_model(out: str, architecture: str, seed: int = 0, tie: bool = False,
                    **config_overrides) -> str:
    """A random-weight model folder of the given architecture, small enough for CPU tests."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.2, tie_word_embeddings=tie, eos_token_id=2,
                  bos_token_id=1)
    common.update(config_overrides)
    classes = {"llama": (LlamaConfig, LlamaForCausalLM),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[architecture]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**common)).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    return {arch: make_tiny_model(str(tmp_path_factory.mktemp(arch)), arch)
            for arch in ("llama", "qwen2")}


@pytest.fixture(scope="session")
def uneven_qwen2(tmp_path_factory) -> str:
    """A tiny Qwen2 with 6 heads in 3 KV groups: over 2 ranks they split 4 + 2."""
    return make_tiny_model(str(tmp_path_factory.mktemp("qwen2_6h3kv")), "qwen2", seed=3,
                           hidden_size=96, num_attention_heads=6, num_key_value_heads=3)


@pytest.fixture(scope="session")
def wide_vocab_model(tmp_path_factory) -> str:
    """A tiny Llama with the demo tokenizer's vocabulary (49152): any text, chat too."""
    return make_tiny_model(str(tmp_path_factory.mktemp("wide_vocab")), "llama",
                           vocab_size=49152)


@pytest.fixture(scope="session")
def two_eos_model(tmp_path_factory) -> str:
    """A tiny Llama whose generation_config.json lists two eos ids (two_eos_model.py)."""
    from two_eos_model import write_generation_config
    folder = make_tiny_model(str(tmp_path_factory.mktemp("two_eos")), "llama", seed=5)
    write_generation_config(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_deepseek(tmp_path_factory):
    """tiny_deepseek(name) -> the folder of that tiny DeepSeek (deepseek_models.VARIANTS),
    saved once per session."""
    from deepseek_models import make_variant
    folders: dict[str, str] = {}

    def folder(name: str) -> str:
        if name not in folders:
            path = str(tmp_path_factory.mktemp(f"deepseek_{name}"))
            make_variant(path, name)
            folders[name] = path
        return folders[name]
    return folder


def read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)
