"""`vllm quantize MODEL OUTPUT`: write MODEL (a Hugging Face folder or a .gguf file) as a W8A8
checkpoint in vllm-ascend's format (vllm/quantize/)."""
import argparse

from vllm.model_executor.layers.quantization.ascend_format import (
    DEFAULT_SKIP, QUANTIZED, W8A8_DYNAMIC)


def add_cli_args(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quantize", help="write a model as a W8A8 / W8A8_DYNAMIC checkpoint",
        description="Round-to-nearest per-output-channel int8 weights; W8A8 also calibrates "
        "a per-tensor input scale and offset on the given prompts.")
    parser.add_argument("model", help="a Hugging Face folder or a .gguf file")
    parser.add_argument("output", help="the new folder to write (must not exist)")
    parser.add_argument("--method", default=W8A8_DYNAMIC, choices=QUANTIZED)
    parser.add_argument("--calib-prompt", action="append", default=[], metavar="TEXT",
                        help="a calibration prompt for W8A8 (repeatable)")
    parser.add_argument("--calib-file", default=None, metavar="FILE",
                        help="calibration prompts, one per line")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizes the calibration prompts (default: the model's)")
    parser.add_argument("--skip", default=",".join(DEFAULT_SKIP), metavar="NAMES",
                        help="comma-separated layers kept FLOAT: a module name or its last "
                        f"parts (default: {','.join(DEFAULT_SKIP)}, as msModelSlim leaves them)")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from vllm.quantize.checkpoint import quantize_checkpoint
    from vllm.transformers_utils.gguf_cache import resolve_model_source
    prompts = list(args.calib_prompt) + read_prompts(args.calib_file)
    skip = tuple(name.strip() for name in args.skip.split(",") if name.strip())
    output = quantize_checkpoint(resolve_model_source(args.model), args.output, args.method,
                                 skip, prompts, args.tokenizer and resolve_model_source(args.tokenizer))
    print(output)
    return 0


def read_prompts(path) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except OSError as error:
        raise ValueError(f"--calib-file: {error}") from None
