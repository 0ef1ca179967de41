"""`vllm serve [MODEL] [flags]`: the OpenAI-compatible server (API process + engine-core process).

Refused flags and bad config values end start-up with one line and exit code 2; an engine
that cannot start ends it with one line and exit code 1.
"""
import argparse
import asyncio
import sys

from vllm.entrypoints.openai.cli_args import (ServeArgumentError, add_serve_args,
                                              check_expert_parallel, engine_args_from_cli,
                                              flag_named_error)
from vllm.logger import init_logger

logger = init_logger(__name__)

DESCRIPTION = ("Start the OpenAI-compatible server: /v1/completions, /v1/chat/completions, "
               "/v1/models, /tokenize, /detokenize, /health, /metrics, /version.")


def add_cli_args(subparsers) -> argparse.ArgumentParser:
    """Register `serve` on the `vllm` command's subparsers."""
    parser = subparsers.add_parser("serve", help="start the OpenAI-compatible server",
                                   description=DESCRIPTION)
    add_serve_args(parser)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; ServeArgumentError (a ValueError) on bad flags."""
    from vllm.distributed.network import remember_serve_host
    from vllm.entrypoints.openai.api_server import bind_socket

    remember_serve_host(args.host)  # internal sockets bind there too (or VLLM_HOST_IP)
    engine_args = engine_args_from_cli(args)
    if args.headless:
        return _run_headless(args, engine_args)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as error:
        print(f"vllm serve: error: {error}", file=sys.stderr)
        return 1
    try:
        return _serve(args, _engine_config(args, engine_args), sock)
    except KeyboardInterrupt:
        logger.info("server stopped")
        return 0
    finally:
        sock.close()


def _engine_config(args: argparse.Namespace, engine_args):
    from vllm.config import ConfigError
    try:
        vllm_config = engine_args.create_engine_config()
    except ConfigError as error:
        raise ServeArgumentError(flag_named_error(error)) from None
    check_expert_parallel(args, vllm_config.model_config.hf_config)
    return vllm_config


def _run_headless(args: argparse.Namespace, engine_args) -> int:
    from vllm.engine.dp_handshake import JoinRefused
    from vllm.engine.headless import run_headless
    try:
        return run_headless(_engine_config(args, engine_args))
    except JoinRefused as error:
        raise ServeArgumentError(str(error)) from None


def _serve(args: argparse.Namespace, vllm_config, sock) -> int:
    from vllm.engine.core_client import EngineStartError
    from vllm.entrypoints.openai.api_server import run_server
    if args.api_server_count > 1:
        from vllm.entrypoints.openai.api_server_pool import run_api_servers
        return run_api_servers(args, vllm_config, sock)
    try:
        asyncio.run(run_server(args, vllm_config, sock))
    except EngineStartError as error:
        if error.is_config_error:
            raise ServeArgumentError(str(error)) from None
        print(f"vllm serve: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. the data-parallel RPC port is taken
        print(f"vllm serve: error: {error}", file=sys.stderr)
        return 1
    return 0


def _run_standalone(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vllm serve", description=DESCRIPTION)
    add_serve_args(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"vllm serve: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_run_standalone())
