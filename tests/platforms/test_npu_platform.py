"""NPU platform contract: detection, dtype, block size, graph-mode switches."""
import types

import pytest
import torch

from fake_npu_platform import FAKE_DIR, fake_npu
from vllm.platforms import detect_platform
from vllm.platforms.cuda import CudaPlatform
from vllm.platforms.npu import NpuPlatform


def config(enforce_eager=False, block_size=128, is_mla=False, **additional):
    model_config = types.SimpleNamespace(enforce_eager=enforce_eager, is_mla=is_mla)
    return types.SimpleNamespace(model_config=model_config,
                                 cache_config=types.SimpleNamespace(block_size=block_size),
                                 additional_config=additional)


def test_target_device_npu_picks_the_npu_platform(monkeypatch):
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "npu")
    with fake_npu():
        platform = detect_platform()
        assert type(platform) is NpuPlatform
        assert platform.dist_backend == "hccl" and platform.device_type == "npu"
        assert platform.default_block_size == 128
        assert platform.default_dtype() == torch.bfloat16
        assert platform.visible_devices_env() == "ASCEND_RT_VISIBLE_DEVICES"
        assert platform.get_attn_backend_cls().name == "NPU_ATTN"


def test_fp16_where_bf16_is_missing(monkeypatch):
    with fake_npu():
        monkeypatch.setattr(torch.npu, "is_bf16_supported", lambda: False)
        assert NpuPlatform().default_dtype() == torch.float16


def test_without_torch_npu_the_npu_platform_is_not_detected(monkeypatch):
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    assert detect_platform().name in ("cpu", "cuda")
    assert not hasattr(torch, "npu") or not getattr(torch.npu, "_fake", False)


@pytest.mark.parametrize("additional,eager,mode", [
    ({}, False, None),
    ({"torchair_graph_config": {"enabled": True}}, False, "compile"),
    ({"torchair_graph_config": {"enabled": True}}, True, None),
    ({"torchair_graph_config": {"enabled": False}}, False, None),
])
def test_torchair_switch(additional, eager, mode):
    with fake_npu():
        assert NpuPlatform().decode_graph_mode(config(eager, **additional)) == mode


def test_bad_torchair_config_is_a_clear_error():
    with fake_npu():
        with pytest.raises(ValueError, match="torchair_graph_config"):
            NpuPlatform().decode_graph_mode(config(torchair_graph_config=True))


def test_mla_models_decode_eagerly():
    """NPU refuses TorchAir for MLA models (one line), CUDA captures no graphs for them."""
    from vllm.attention.backends import cuda as cuda_backend
    from vllm.config import ConfigError
    with fake_npu():
        with pytest.raises(ConfigError, match="torchair_graph_config: MLA"):
            NpuPlatform().decode_graph_mode(config(is_mla=True, torchair_graph_config={
                "enabled": True}))
        assert NpuPlatform().decode_graph_mode(config(is_mla=True)) is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cuda_backend, "HAS_FLASH_ATTN", True)
        assert CudaPlatform().decode_graph_mode(config(block_size=256, is_mla=True)) is None


def test_cuda_captures_only_over_flash_attn(monkeypatch):
    from vllm.attention.backends import cuda as cuda_backend
    monkeypatch.setattr(cuda_backend, "HAS_FLASH_ATTN", True)
    assert CudaPlatform().decode_graph_mode(config(block_size=256)) == "capture"
    assert CudaPlatform().decode_graph_mode(config(enforce_eager=True, block_size=256)) is None
    assert CudaPlatform().decode_graph_mode(config(block_size=16)) is None  # SDPA: eager
    monkeypatch.setattr(cuda_backend, "HAS_FLASH_ATTN", False)
    assert CudaPlatform().decode_graph_mode(config(block_size=256)) is None


def test_npu_block_size_is_checked_with_the_config(tiny_model_dirs):
    from vllm.config import ConfigError
    from vllm.engine.arg_utils import EngineArgs
    with fake_npu():
        NpuPlatform().check_block_size(128)
        with pytest.raises(ConfigError, match="block_size 256 is not supported"):
            EngineArgs(model=tiny_model_dirs["llama"], block_size=256).create_engine_config()
        config = EngineArgs(model=tiny_model_dirs["llama"]).create_engine_config()
        assert config.cache_config.block_size == 128


def test_fake_is_only_on_the_path_inside(monkeypatch):
    import sys
    with fake_npu():
        assert FAKE_DIR in sys.path
    assert FAKE_DIR not in sys.path and "torch_npu" not in sys.modules
