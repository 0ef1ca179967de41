"""A fake `torchair` for tests: get_npu_backend gives a torch.compile backend that runs the
captured FX graph eagerly and counts compilations."""
from collections import Counter

COMPILES: Counter = Counter()


class CompilerConfig:
    def __init__(self):
        self.mode = "max-autotune"


def get_npu_backend(*, compiler_config=None):
    if compiler_config is not None and not isinstance(compiler_config, CompilerConfig):
        raise TypeError("compiler_config must be a torchair.CompilerConfig")

    def backend(graph_module, example_inputs):
        COMPILES["graphs"] += 1
        return graph_module.forward

    return backend
