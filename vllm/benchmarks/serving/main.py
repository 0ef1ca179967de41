"""Entry point: parse flags, build the prompts, run the traffic, report the metrics."""
import argparse
import asyncio
import json
import urllib.request

from vllm.benchmarks.serving import cli_args
from vllm.benchmarks.serving.goodput import parse_goodput
from vllm.benchmarks.serving.metrics import calculate_metrics
from vllm.benchmarks.serving.random_dataset import sample_random_requests
from vllm.benchmarks.serving.report import (RunInfo, build_result, format_errors,
                                            format_table, result_path, save_result)
from vllm.benchmarks.serving.request_funcs import auth_headers
from vllm.benchmarks.serving.runner import TrafficConfig, describe_traffic, run_requests
from vllm.benchmarks.serving.tokenizer import load_tokenizer

MODELS_TIMEOUT_S = 30


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark with command-line flags; returns the result document."""
    args = cli_args.make_parser().parse_args(argv)
    resolve_model(args)
    tokenizer = load_tokenizer(args.tokenizer, args.trust_remote_code)
    return run_benchmark(args, tokenizer)


def resolve_model(args: argparse.Namespace) -> None:
    """Fill --model from GET /v1/models when omitted, and --tokenizer from --model."""
    if args.model is None:
        args.model = first_served_model(cli_args.server_base_url(args))
    if args.tokenizer is None:
        args.tokenizer = args.model


def first_served_model(base_url: str) -> str:
    """The id of the first model the server lists."""
    request = urllib.request.Request(f"{base_url}/v1/models", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=MODELS_TIMEOUT_S) as response:
        models = json.load(response)["data"]
    if not models:
        raise RuntimeError(f"{base_url}/v1/models lists no model")
    return models[0]["id"]


def run_benchmark(args: argparse.Namespace, tokenizer) -> dict:
    """Run a benchmark whose --model and --tokenizer are resolved; print and maybe save."""
    slos = parse_goodput(args.goodput)
    shown_metrics = cli_args.selected_metrics(args)
    percentiles = cli_args.selected_percentiles(args)
    samples = sample_random_requests(
        tokenizer, args.num_prompts, args.random_input_len, args.random_output_len,
        args.random_range_ratio, args.random_prefix_len, args.seed)
    traffic = traffic_config(args)
    print(describe_traffic(traffic))
    outputs, duration = asyncio.run(run_requests(traffic, samples))
    metrics = calculate_metrics(outputs, duration, tokenizer, percentiles, slos)
    run = RunInfo(args.backend, args.model, args.tokenizer, args.num_prompts,
                  args.request_rate, args.burstiness, args.max_concurrency, duration,
                  has_goodput=bool(slos))
    print(format_table(metrics, run, shown_metrics))
    if metrics.failed:
        print(format_errors(outputs))
    result = build_result(metrics, run, outputs)
    if args.save_result:
        save_result(result, result_path(run, args.result_dir, args.result_filename))
    return result


def traffic_config(args: argparse.Namespace) -> TrafficConfig:
    """Request-sending settings taken from the flags."""
    return TrafficConfig(
        backend=args.backend,
        api_url=cli_args.server_base_url(args) + cli_args.resolve_endpoint(args),
        model=args.served_model_name or args.model,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        request_rate=args.request_rate,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        disable_tqdm=args.disable_tqdm)
