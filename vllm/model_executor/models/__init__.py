"""Model architectures, looked up by Hugging Face architecture name."""
from vllm.model_executor.models.registry import (
    resolve_model_cls, supported_architectures)

__all__ = ["resolve_model_cls", "supported_architectures"]
