"""Building a model and filling it with checkpoint weights."""
from vllm.model_executor.model_loader.loader import get_model

__all__ = ["get_model"]
