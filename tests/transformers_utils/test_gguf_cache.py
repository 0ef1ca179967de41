import os

import pytest
from safetensors import safe_open

from vllm.transformers_utils import gguf_cache
from vllm.transformers_utils.tokenizer import get_tokenizer


def test_conversion_is_complete_and_reused(demo_gguf, demo_model_dir):
    assert os.path.isfile(os.path.join(demo_model_dir, "conversion-complete"))
    assert gguf_cache.resolve_model_source(demo_gguf) == demo_model_dir
    with safe_open(os.path.join(demo_model_dir, "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "model.embed_tokens.weight" in names
    assert len([n for n in names if n.endswith("q_proj.weight")]) == 30


def test_converted_tokenizer_equals_gguf_tokenizer(demo_gguf, demo_model_dir):
    original, converted = get_tokenizer(demo_gguf), get_tokenizer(demo_model_dir)
    for text in ["Hello world", "def f(x):\n    return x", "héllo 你好 🙂", "<|im_end|>"]:
        assert original.encode(text) == converted.encode(text)
    chat = [{"role": "user", "content": "hi"}]
    assert (original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) ==
            converted.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_non_gguf_paths_pass_through(tmp_path):
    assert gguf_cache.resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_disabled_cache_passes_through(demo_gguf, monkeypatch):
    monkeypatch.setenv("VLLM_GGUF_CACHE", "0")
    assert gguf_cache.resolve_model_source(demo_gguf) == demo_gguf


def test_bad_gguf_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_GGUF_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ValueError, match="bad.gguf"):
        gguf_cache.resolve_model_source(str(bad))
    leftovers = os.listdir(tmp_path / "cache") if (tmp_path / "cache").exists() else []
    assert leftovers == []
