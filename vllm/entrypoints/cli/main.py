"""The `vllm` console script: subcommands register themselves here."""
import argparse
import sys

from vllm.entrypoints.cli.serve import add_cli_args as _add_serve
from vllm.platforms.cpu_isa import requested_isa


def _demo_model(args: argparse.Namespace) -> int:
    from vllm.demo_model import demo_model_path, demo_w8a8_path
    print(demo_w8a8_path() if args.w8a8 else demo_model_path())
    return 0


def _add_demo_model(subparsers) -> None:
    parser = subparsers.add_parser("demo-model", help="print the local path of the demo model")
    parser.add_argument("--w8a8", action="store_true",
                        help="its W8A8_DYNAMIC checkpoint instead (made once if missing)")
    parser.set_defaults(func=_demo_model)


def _add_bench(subparsers) -> None:
    from vllm.benchmarks import throughput
    bench = subparsers.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", metavar="BENCHMARK", required=True)
    parser = bench.add_parser("throughput", help="offline throughput benchmark")
    throughput.add_cli_args(parser)
    parser.set_defaults(func=throughput.main)


def _add_plan(subparsers) -> None:
    from vllm.entrypoints.cli.plan import add_cli_args
    add_cli_args(subparsers)


def _add_proxy(subparsers) -> None:
    from vllm.disagg.cli import add_cli_args
    add_cli_args(subparsers)


def _add_quantize(subparsers) -> None:
    from vllm.entrypoints.cli.quantize import add_cli_args
    add_cli_args(subparsers)


def build_parser() -> argparse.ArgumentParser:
    from vllm.version import __version__
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM-compatible inference engine "
                                     "with disaggregated prefill/decode")
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_model(subparsers)
    _add_bench(subparsers)
    _add_serve(subparsers)
    _add_proxy(subparsers)
    _add_plan(subparsers)
    _add_quantize(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        requested_isa()  # a bad VLLM_CPU_ISA stops here, in one line
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"vllm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
