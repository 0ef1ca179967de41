"""A test-only NPU platform hosted on the CPU: NpuPlatform's backend, block size and dtype,
with a CPU device and gloo, and the fake torch_npu / torchair put on sys.path."""
import contextlib
import os
import sys

import psutil
import pytest
import torch

from fake_device import mark_device
from vllm.platforms import _LazyPlatform
from vllm.platforms.cpu import CpuPlatform
from vllm.platforms.npu import NpuPlatform

FAKE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_torch_npu")
_FAKE_MODULES = ("torch_npu", "torchair")
_BACKEND_MODULES = ("vllm.attention.backends.npu", "vllm.attention.backends.npu_ops",
                    "vllm.attention.backends.npu_mla", "vllm.attention.backends.npu_mla_ops",
                    "vllm.platforms.npu_moe")
TEST_KV_CACHE_BYTES = 64 << 20


class CpuHostedNpuPlatform(NpuPlatform):
    device_type = "cpu"
    dist_backend = "gloo"

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")

    def set_device(self, device: torch.device) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def total_memory_bytes(self) -> int:
        return psutil.virtual_memory().total

    def kv_cache_budget_bytes(self, memory_utilization, ranks_on_host: int = 1) -> int:
        return TEST_KV_CACHE_BYTES // ranks_on_host

    create_pair_group = CpuPlatform.create_pair_group


def _forget_modules() -> None:
    """Drop the fakes and the modules bound to them, so each use imports them afresh."""
    for name in list(sys.modules):
        if name.split(".")[0] in _FAKE_MODULES or name in _BACKEND_MODULES:
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and hasattr(sys.modules[parent], child):
                delattr(sys.modules[parent], child)
    if getattr(getattr(torch, "npu", None), "_fake", False):
        del torch.npu


@contextlib.contextmanager
def fake_npu(platform=None):
    """Inside: `import torch_npu` gives the fake and current_platform is the NPU platform."""
    _forget_modules()
    sys.path.insert(0, FAKE_DIR)
    previous = _LazyPlatform._platform
    _LazyPlatform._platform = platform or CpuHostedNpuPlatform()
    _mark_device_copies()
    try:
        yield _LazyPlatform._platform
    finally:
        _LazyPlatform._platform = previous
        sys.path.remove(FAKE_DIR)
        _forget_modules()


def _mark_device_copies() -> None:
    """Metadata the backend moves to the device comes back marked (fake_device), so the fake
    ops can tell device arguments from host ones although all are CPU tensors."""
    import vllm.attention.backends.npu as backend
    backend.to_device = lambda t, device: mark_device(t.to(device, non_blocking=True))


def fake_calls():
    import torch_npu
    return torch_npu.CALLS


@pytest.fixture
def npu_platform():
    with fake_npu() as platform:
        yield platform
