"""The independent reference of the W8A8 model tests: transformers' own model with the
quantized checkpoint's weights dequantized (int8 x scale) and every quantized layer's input
fake-quantized by a forward pre-hook (per token for W8A8_DYNAMIC, per tensor with the
stored scale and offset for W8A8), written here in plain PyTorch."""
import json
import os
import types

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vllm.entrypoints.cli.main import main as vllm_main

# Calibration text whose token ids (demo tokenizer) stay inside the tiny models' vocabulary.
CALIB_PROMPTS = ["a b c d e f g 1 2 3 4 5 6 7 8 9 0", "g f e d c b a 9 8 7"]


def quantize_with_cli(source: str, output: str, method: str, tokenizer: str,
                      skip=None) -> str:
    args = ["quantize", source, output, "--method", method, "--tokenizer", tokenizer]
    if skip is not None:
        args.append(f"--skip={skip}")
    for prompt in CALIB_PROMPTS:
        args += ["--calib-prompt", prompt]
    assert vllm_main(args) == 0
    return output


def per_token_fake_quant(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).float()  # (T, K)
    step = flat.abs().max(dim=1, keepdim=True).values / 127  # (T, 1)
    step = torch.where(step > 0, step, torch.ones_like(step))
    return (torch.round(flat / step).clamp(-127, 127) * step).reshape(x.shape).to(x.dtype)


def per_tensor_fake_quant(x: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    q = torch.round(x.float() / scale + offset).clamp(-128, 127)
    return ((q - offset) * scale).to(x.dtype)


def read_quantized(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    with open(os.path.join(folder, "quant_model_description.json")) as handle:
        description = json.load(handle)
    tensors = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return description, tensors


def dequantized(tensors: dict, prefix: str) -> torch.Tensor:
    return tensors[f"{prefix}.weight"].float() * tensors[f"{prefix}.weight_scale"].reshape(-1, 1)


def fake_quantized_hf_model(source: str, quantized: str):
    """transformers' model of `source` computing as the W8A8 checkpoint `quantized` says."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    description, tensors = read_quantized(quantized)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, method in description.items():
            prefix = key[:-len(".weight")]
            if not key.endswith(".weight") or method == "FLOAT" or ".experts." in f".{prefix}":
                continue
            linear = modules[prefix]
            linear.weight.copy_(dequantized(tensors, prefix))
            if method == "W8A8":
                fake_static(linear, tensors, prefix)
            else:
                linear.register_forward_pre_hook(lambda m, args: (per_token_fake_quant(args[0]),))
        for name, module in modules.items():
            if hasattr(module, "gate_up_proj") and f"{name}.0.gate_proj.weight" in description:
                fake_experts(module, tensors, name)
    return model


def fake_static(linear, tensors: dict, prefix: str) -> None:
    scale = float(tensors[f"{prefix}.input_scale"])
    offset = float(tensors[f"{prefix}.input_offset"])
    deq = tensors[f"{prefix}.deq_scale"].float()
    row_sums = tensors[f"{prefix}.weight"].double().sum(dim=1)
    folded = (tensors[f"{prefix}.quant_bias"].double() + offset * row_sums) * deq.double()
    linear.bias = torch.nn.Parameter(folded.float(), requires_grad=False)
    linear.register_forward_pre_hook(
        lambda m, args: (per_tensor_fake_quant(args[0], scale, offset),))


def fake_experts(experts, tensors: dict, name: str) -> None:
    """transformers' stacked experts with dequantized weights, each expert's inputs
    fake-quantized per token."""
    for e in range(experts.gate_up_proj.shape[0]):
        experts.gate_up_proj[e].copy_(torch.cat([dequantized(tensors, f"{name}.{e}.gate_proj"),
                                                 dequantized(tensors, f"{name}.{e}.up_proj")]))
        experts.down_proj[e].copy_(dequantized(tensors, f"{name}.{e}.down_proj"))

    def forward(self, hidden, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden)  # (T, H)
        for token in range(hidden.shape[0]):
            for slot, expert in enumerate(top_k_index[token].tolist()):
                x = per_token_fake_quant(hidden[token:token + 1])
                gate, up = F.linear(x, self.gate_up_proj[expert]).chunk(2, dim=-1)
                act = per_token_fake_quant(self.act_fn(gate) * up)
                out[token] += top_k_weights[token, slot] * F.linear(act, self.down_proj[expert])[0]
        return out
    experts.forward = types.MethodType(forward, experts)
