"""`vllm proxy`: flags, instance lists and the process entry point.

Bad flag values end the command with one line on stderr and exit code 2; a port that
cannot be bound ends it with exit code 1.
"""
import argparse
import asyncio
import logging
import os
import sys
from typing import Optional, Sequence

from vllm.disagg.proxy_config import ProxyConfig, base_url

DESCRIPTION = ("Disaggregated prefill/decode proxy: each completion or chat request is "
               "prefilled on a prefill instance and answered by a decode instance that "
               "pulls its KV cache.")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_proxy_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the proxy's flags to a parser."""
    parser.add_argument("--host", default="localhost", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="port to bind")
    for role, default_port in (("prefiller", 8100), ("decoder", 8200)):
        parser.add_argument(f"--{role}-hosts", f"--{role}-host", dest=f"{role}_hosts",
                            nargs="+", default=["localhost"], metavar="HOST",
                            help=f"{role} instance hosts")
        parser.add_argument(f"--{role}-ports", f"--{role}-port", dest=f"{role}_ports",
                            nargs="+", type=int, default=[default_port], metavar="PORT",
                            help=f"{role} instance ports: one per host, one for all "
                                 f"hosts, or many for a single host")
    parser.add_argument("--health-interval-s", type=float, default=2.0,
                        help="seconds between health checks of every instance")
    parser.add_argument("--request-timeout-s", type=float, default=600.0,
                        help="seconds one upstream request may take in total")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"), metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on every route but "
                             "/health and /metrics [env VLLM_API_KEY]")
    parser.add_argument("--instance-api-key", default=None, metavar="KEY",
                        help="the key sent to the prefill and decode instances (their "
                             "--api-key) in place of the client's Authorization header "
                             "[the proxy's --api-key]")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser


def add_cli_args(subparsers) -> argparse.ArgumentParser:
    """Register `proxy` on the `vllm` command's subparsers."""
    parser = subparsers.add_parser("proxy", help="start the prefill/decode proxy",
                                   description=DESCRIPTION)
    add_proxy_args(parser)
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser (used by pd_example/toy_proxy_server.py)."""
    return add_proxy_args(argparse.ArgumentParser(prog="vllm proxy", description=DESCRIPTION))


def pair_endpoints(role: str, hosts: Sequence[str], ports: Sequence[int]) -> list[str]:
    """Base URLs from host and port lists; ValueError when the counts do not pair up.

    Equal counts pair up in order; one port applies to every host; one host takes
    every port.
    """
    if not hosts or not ports:
        raise ValueError(f"--{role}-hosts and --{role}-ports need at least one value")
    if len(ports) == 1:
        pairs = [(host, ports[0]) for host in hosts]
    elif len(hosts) == 1:
        pairs = [(hosts[0], port) for port in ports]
    elif len(hosts) == len(ports):
        pairs = list(zip(hosts, ports))
    else:
        raise ValueError(f"--{role}-hosts has {len(hosts)} values but --{role}-ports has "
                         f"{len(ports)}; give one port for all hosts, one host for all "
                         f"ports, or as many of each")
    return [base_url(host, port) for host, port in pairs]


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    """The proxy settings from parsed flags; ValueError on a bad combination."""
    return ProxyConfig(
        host=args.host, port=args.port,
        prefill_urls=pair_endpoints("prefiller", args.prefiller_hosts, args.prefiller_ports),
        decode_urls=pair_endpoints("decoder", args.decoder_hosts, args.decoder_ports),
        health_interval_s=args.health_interval_s, request_timeout_s=args.request_timeout_s,
        api_key=args.api_key or None,
        instance_api_key=args.instance_api_key or args.api_key or None)


def run(args: argparse.Namespace) -> int:
    """Run the proxy from parsed flags until SIGINT/SIGTERM; ValueError on bad flags."""
    config = config_from_args(args)
    logging.getLogger("vllm").setLevel(args.log_level.upper())
    from vllm.disagg.proxy_app import serve
    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(f"vllm proxy: error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as error:
        print(f"vllm proxy: error: {error}", file=sys.stderr)
        return 2
