"""`current_platform`: the device family this process runs on, detected once."""
import os

from vllm.platforms.interface import Platform


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
        import torch
        return torch.npu.is_available()
    except Exception:
        return False


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def detect_platform() -> Platform:
    target = os.environ.get("VLLM_TARGET_DEVICE", "").lower()
    if target not in ("", "cpu", "cuda", "npu"):
        raise ValueError(f"VLLM_TARGET_DEVICE must be cpu, cuda or npu, got {target!r}")
    if target == "npu" or (not target and _npu_available()):
        from vllm.platforms.npu import NpuPlatform
        return NpuPlatform()
    if target == "cuda" or (not target and _cuda_available()):
        from vllm.platforms.cuda import CudaPlatform
        return CudaPlatform()
    from vllm.platforms.cpu import CpuPlatform
    return CpuPlatform()


class _LazyPlatform:
    _platform = None

    def __getattr__(self, name):
        if _LazyPlatform._platform is None:
            _LazyPlatform._platform = detect_platform()
        return getattr(_LazyPlatform._platform, name)


current_platform: Platform = _LazyPlatform()  # type: ignore[assignment]
