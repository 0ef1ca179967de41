"""Input ranges of linear layers, recorded by running calibration prompts through the
transformers model (forward pre-hooks on its nn.Linear modules)."""
import torch
from torch import nn

Range = tuple[float, float]


def input_ranges(folder: str, tokenizer_path: str, prompts: list[str], layers: set[str]
                 ) -> dict[str, Range]:
    """(min, max) of every input value each of `layers` (module names) sees on `prompts`;
    ValueError naming a layer transformers does not run as an nn.Linear."""
    from transformers import AutoModelForCausalLM

    from vllm.transformers_utils.tokenizer import get_tokenizer
    tokenizer = get_tokenizer(tokenizer_path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    modules = {name: module for name, module in model.named_modules()
               if name in layers and isinstance(module, nn.Linear)}
    missing = sorted(layers - set(modules))
    if missing:
        raise ValueError(f"{missing[0]}: no nn.Linear of that name in the transformers model "
                         "to calibrate its W8A8 input on; add it to --skip")
    ranges: dict[str, Range] = {}
    handles = [module.register_forward_pre_hook(_recorder(name, ranges))
               for name, module in modules.items()]
    try:
        with torch.inference_mode():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt").input_ids
                model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def _recorder(name: str, ranges: dict[str, Range]):
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float()
        low, high = float(x.min()), float(x.max())
        if name in ranges:
            low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
        ranges[name] = (low, high)
    return hook
