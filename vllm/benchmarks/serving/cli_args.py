"""Command-line flags of the serving benchmark (same names as vLLM's benchmark_serving.py)."""
import argparse

BACKENDS = ("vllm", "openai", "openai-chat")
METRIC_NAMES = ("ttft", "tpot", "itl", "e2el")
DEFAULT_ENDPOINTS = {
    "vllm": "/v1/completions",
    "openai": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
}


def make_parser() -> argparse.ArgumentParser:
    """Return the parser for every flag the benchmark understands."""
    parser = argparse.ArgumentParser(
        description="Benchmark the online serving throughput and latency of an "
        "OpenAI-compatible server.")
    _add_server_flags(parser)
    _add_dataset_flags(parser)
    _add_traffic_flags(parser)
    _add_metric_flags(parser)
    _add_result_flags(parser)
    return parser


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="vllm")
    parser.add_argument("--base-url", default=None,
                        help="Server base URL, e.g. http://127.0.0.1:8000 "
                        "(overrides --host and --port).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoint", default=None,
                        help="API path; /v1/completions, or /v1/chat/completions "
                        "for openai-chat.")
    parser.add_argument("--model", default=None,
                        help="Model name; asked from GET /v1/models when omitted.")
    parser.add_argument("--served-model-name", default=None,
                        help="Model name sent in requests, when it differs from --model.")
    parser.add_argument("--tokenizer", default=None,
                        help="Tokenizer name, folder or .gguf file (default: the model).")
    parser.add_argument("--trust-remote-code", action="store_true")


def _add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-name", choices=("random",), default="random")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="Lengths are uniform in [len*(1-r), len*(1+r)]; 0 <= r < 1.")
    parser.add_argument("--random-prefix-len", type=int, default=0,
                        help="Random tokens shared by every prompt, before its own tokens.")
    parser.add_argument("--seed", type=int, default=0)


def _add_traffic_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="Requests per second; inf sends them all at once.")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="Gamma shape of inter-arrival times; 1.0 is a Poisson process.")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--disable-tqdm", action="store_true")


def _add_metric_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--percentile-metrics", default="ttft,tpot,itl",
                        help=f"Comma-separated subset of {','.join(METRIC_NAMES)}.")
    parser.add_argument("--metric-percentiles", default="99",
                        help="Comma-separated percentiles, e.g. 25,50,99.")
    parser.add_argument("--goodput", nargs="+", default=None,
                        help="Service level objectives as KEY:MILLISECONDS pairs, "
                        "KEY in ttft, tpot, e2el.")


def _add_result_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-result", action="store_true")
    parser.add_argument("--result-dir", default=None)
    parser.add_argument("--result-filename", default=None)


def resolve_endpoint(args: argparse.Namespace) -> str:
    """The API path to post to: --endpoint, else the backend's default."""
    return args.endpoint or DEFAULT_ENDPOINTS[args.backend]


def server_base_url(args: argparse.Namespace) -> str:
    """The server's root URL, without a trailing slash."""
    if args.base_url:
        return args.base_url.rstrip("/")
    return f"http://{args.host}:{args.port}"


def selected_metrics(args: argparse.Namespace) -> list[str]:
    """The metrics whose percentiles are printed, validated."""
    names = [name.strip() for name in args.percentile_metrics.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown --percentile-metrics {unknown}; choose from {METRIC_NAMES}")
    return names


def selected_percentiles(args: argparse.Namespace) -> list[float]:
    """The percentiles to report, validated to lie in (0, 100]."""
    values = [float(text) for text in args.metric_percentiles.split(",") if text.strip()]
    if any(not 0 < value <= 100 for value in values):
        raise ValueError(f"--metric-percentiles must lie in (0, 100], got {values}")
    return values
