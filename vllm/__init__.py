"""A vLLM-compatible inference engine with disaggregated prefill/decode built in."""
from vllm.version import __version__


def __getattr__(name):
    if name == "LLM":
        from vllm.entrypoints.llm import LLM
        return LLM
    if name == "SamplingParams":
        from vllm.sampling_params import SamplingParams
        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        import vllm.outputs
        return getattr(vllm.outputs, name)
    if name == "EngineArgs":
        from vllm.engine.arg_utils import EngineArgs
        return EngineArgs
    raise AttributeError(f"module 'vllm' has no attribute {name!r}")


__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "EngineArgs",
           "__version__"]
