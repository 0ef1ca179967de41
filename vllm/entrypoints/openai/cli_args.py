"""The flags of `vllm serve` (vLLM's names) and their validation into EngineArgs.

Every flag of the seed deployments is recognised. Flags whose feature is not built yet stop
start-up with one line naming the flag (ServeArgumentError) instead of being ignored.
"""
import argparse
import json
import os
import re
from typing import Any, Optional

from vllm.distributed.network import DEFAULT_DP_RPC_PORT, LOOPBACK
from vllm.entrypoints.openai.request_body import DEFAULT_MAX_REQUEST_BODY_BYTES
from vllm.entrypoints.openai.request_limits import DEFAULT_MAX_N
from vllm.kv_transfer_params import KV_ROLES

KV_TRANSFER_CONFIG_KEYS = {
    "kv_connector": (str,), "kv_role": (str,), "kv_rank": (int,), "kv_parallel_size": (int,),
    "kv_ip": (str,), "kv_port": (int, str), "kv_buffer_device": (str,),
    "kv_buffer_size": (int, float), "engine_id": (str, int),
    "kv_connector_extra_config": (dict,), "kv_connector_module_path": (str,),
    "kv_load_failure_policy": (str,),
}
KV_LOAD_FAILURE_POLICIES = ("recompute", "fail")
ADDITIONAL_CONFIG_KEYS = {
    "torchair_graph_config": (dict,), "chunked_prefill_for_mla": (bool,),
    "ascend_scheduler_config": (dict,),
}
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class ServeArgumentError(ValueError):
    """A flag value `vllm serve` refuses; the message names the flag."""


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model_tag", nargs="?", metavar="MODEL",
                        help="model folder or .gguf file (default: the demo model)")
    _add_server_args(parser)
    _add_engine_args(parser)
    _add_parallel_args(parser)
    return parser


def _add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="0.0.0.0", help="address to bind")
    group.add_argument("--port", type=int, default=8000)
    group.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every route but /health "
                       "and /metrics (default: $VLLM_API_KEY)")
    group.add_argument("--max-n", type=_positive_int, default=DEFAULT_MAX_N,
                       help="the largest n (samples per prompt) one request may ask for")
    group.add_argument("--max-request-body-bytes", type=_positive_int,
                       default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                       help="larger request bodies get 413 before they are read in full")
    group.add_argument("--served-model-name", nargs="+", default=None,
                       help="names the API answers to (default: the model path)")
    group.add_argument("--disable-log-requests", action="store_true")
    group.add_argument("--uvicorn-log-level", default="info", choices=UVICORN_LOG_LEVELS)


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None, help="same as the positional MODEL")
    group.add_argument("--tokenizer", default=None)
    group.add_argument("--trust-remote-code", action="store_true")
    group.add_argument("--dtype", default="auto")
    group.add_argument("--quantization", "-q", default=None, metavar="ascend",
                       help="W8A8 weights described by quant_model_description.json (found "
                       "in the model folder without this flag too)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--max-num-seqs", type=int, default=None)
    group.add_argument("--max-num-batched-tokens", type=int, default=None)
    group.add_argument("--block-size", type=int, default=None)
    group.add_argument("--gpu-memory-utilization", type=float, default=None)
    group.add_argument("--num-gpu-blocks-override", type=int, default=None)
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=None)
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=None)
    group.add_argument("--enforce-eager", action="store_true")
    group.add_argument("--generation-config", default="auto", metavar="auto|vllm|FOLDER",
                       help="default sampling parameters and eos ids from the model's "
                       "generation_config.json (auto), from FOLDER's, or none (vllm)")
    group.add_argument("--kv-transfer-config", default=None, metavar="JSON")
    group.add_argument("--kv-events-config", default=None, metavar="JSON",
                       help="publish KV cache events on ZMQ (vLLM's KVEventsConfig fields)")
    group.add_argument("--additional-config", default=None, metavar="JSON")


def _add_parallel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parallelism")
    group.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    group.add_argument("--distributed-executor-backend", default=None)
    group.add_argument("--data-parallel-size", "-dp", type=_positive_int, default=1,
                       help="engine cores, each with its own tensor-parallel group and KV "
                       "cache, behind one API")
    group.add_argument("--data-parallel-size-local", "-dpl", type=_positive_int,
                       default=None, help="data-parallel ranks this node runs (default: "
                       "all from the start rank on)")
    group.add_argument("--data-parallel-start-rank", "-dpr", type=int, default=None,
                       help="the first rank a --headless node runs (the head starts at 0)")
    group.add_argument("--data-parallel-address", "-dpa", default=None,
                       help="the head's address: it listens there for headless nodes "
                       f"(default {LOOPBACK})")
    group.add_argument("--data-parallel-rpc-port", "-dpp", type=int, default=None,
                       help=f"the head's port for headless nodes (default {DEFAULT_DP_RPC_PORT})")
    group.add_argument("--data-parallel-backend", "-dpb", default="mp", choices=("mp", "ray"))
    group.add_argument("--api-server-count", "-asc", type=_positive_int, default=1,
                       help="API server processes sharing the port")
    group.add_argument("--headless", action="store_true",
                       help="run data-parallel engine cores only, joining the head at "
                       "--data-parallel-address:--data-parallel-rpc-port")
    group.add_argument("--enable-expert-parallel", "-ep", action="store_true")


_NOT_YET = "is not supported yet"
_WITH_DP = f"{_NOT_YET} with --data-parallel-size > 1"
_NO_DP = "only makes sense with --data-parallel-size > 1"


def check_unsupported(args: argparse.Namespace) -> None:
    """Refuse flags whose feature is not built yet, and data-parallel flags that
    contradict each other (their no-op defaults pass)."""
    dp = args.data_parallel_size > 1
    refusals = [
        (args.data_parallel_backend == "ray", "--data-parallel-backend",
         f"Ray data parallelism {_NOT_YET} (use mp)"),
        (dp and args.enable_expert_parallel, "--enable-expert-parallel",
         f"expert parallelism across data-parallel ranks {_WITH_DP}"),
        (dp and args.kv_transfer_config is not None, "--kv-transfer-config",
         f"disaggregated prefill/decode {_WITH_DP}"),
        (not dp and args.data_parallel_size_local not in (None, 1),
         "--data-parallel-size-local", _NO_DP),
        (not dp and args.data_parallel_start_rank not in (None, 0),
         "--data-parallel-start-rank", _NO_DP),
        (not dp and args.headless, "--headless", _NO_DP),
        (not args.headless and args.data_parallel_start_rank not in (None, 0),
         "--data-parallel-start-rank", "only a --headless node starts above rank 0"),
        (args.headless and args.api_server_count != 1, "--api-server-count",
         "a --headless node runs no API server"),
    ]
    for refused, flag, why in refusals:
        if refused:
            value = getattr(args, flag[2:].replace("-", "_"))
            shown = "" if value is True or flag == "--kv-transfer-config" else f" {value}"
            raise ServeArgumentError(f"{flag}{shown}: {why}")


def data_parallel_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineArgs fields of the data-parallel flags (unset ones left out)."""
    return {"data_parallel_size": args.data_parallel_size,
            "data_parallel_size_local": args.data_parallel_size_local,
            "data_parallel_start_rank": args.data_parallel_start_rank,
            "data_parallel_address": args.data_parallel_address,
            "data_parallel_rpc_port": args.data_parallel_rpc_port}


def check_expert_parallel(args: argparse.Namespace, hf_config: Any) -> None:
    if not args.enable_expert_parallel:
        return
    experts = [getattr(hf_config, name, None) for name in
               ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")]
    if not any(experts):
        raise ServeArgumentError("--enable-expert-parallel: the model is dense (it has no "
                                 "experts to distribute)")
    raise ServeArgumentError(f"--enable-expert-parallel: expert parallelism {_NOT_YET}")


def parse_json_object(flag: str, text: Optional[str]) -> Optional[dict[str, Any]]:
    """A JSON-object flag whose keys and values the engine's config checks."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ServeArgumentError(f"{flag}: malformed JSON ({error})") from None
    if not isinstance(value, dict):
        raise ServeArgumentError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_json_config(flag: str, text: Optional[str],
                      allowed: dict[str, tuple[type, ...]]) -> Optional[dict[str, Any]]:
    """Parse a JSON-object flag, rejecting malformed JSON, unknown keys and wrong types."""
    value = parse_json_object(flag, text)
    if value is None:
        return None
    for key, item in value.items():
        if key not in allowed:
            raise ServeArgumentError(f"{flag}: unknown key {key!r} (known keys: "
                                     f"{', '.join(sorted(allowed))})")
        types = allowed[key]
        if item is not None and (not isinstance(item, types) or
                                 (isinstance(item, bool) and bool not in types)):
            names = " or ".join(t.__name__ for t in types)
            raise ServeArgumentError(f"{flag}: {key!r} must be {names}, got {item!r}")
    return value


def parse_kv_transfer_config(text: Optional[str]) -> Optional[dict[str, Any]]:
    config = parse_json_config("--kv-transfer-config", text, KV_TRANSFER_CONFIG_KEYS)
    if config is None:
        return None
    role = config.get("kv_role")
    if role is not None and role not in KV_ROLES:
        raise ServeArgumentError(f"--kv-transfer-config: kv_role must be one of "
                                 f"{', '.join(KV_ROLES)}, got {role!r}")
    policy = config.get("kv_load_failure_policy")
    if policy is not None and policy not in KV_LOAD_FAILURE_POLICIES:
        raise ServeArgumentError(f"--kv-transfer-config: kv_load_failure_policy must be one "
                                 f"of {', '.join(KV_LOAD_FAILURE_POLICIES)}, got {policy!r}")
    port = config.get("kv_port")
    if isinstance(port, str) and not port.isdigit():
        raise ServeArgumentError(f"--kv-transfer-config: kv_port must be a port number, "
                                 f"got {port!r}")
    return config


def resolve_model(args: argparse.Namespace) -> Optional[str]:
    if args.model_tag and args.model and args.model_tag != args.model:
        raise ServeArgumentError(f"--model {args.model} contradicts the positional model "
                                 f"{args.model_tag}: give one")
    return args.model_tag or args.model


def engine_args_from_cli(args: argparse.Namespace):
    """Validate the flags (ServeArgumentError naming the flag) and build EngineArgs."""
    from vllm.engine.arg_utils import EngineArgs
    check_unsupported(args)
    kwargs = {
        "model": resolve_model(args), "tokenizer": args.tokenizer,
        "served_model_name": args.served_model_name[0] if args.served_model_name else None,
        "trust_remote_code": args.trust_remote_code, "dtype": args.dtype, "seed": args.seed,
        "quantization": args.quantization,
        "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens, "block_size": args.block_size,
        "enable_prefix_caching": args.enable_prefix_caching,
        "enable_chunked_prefill": args.enable_chunked_prefill,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "num_gpu_blocks_override": args.num_gpu_blocks_override,
        "tensor_parallel_size": args.tensor_parallel_size,
        "distributed_executor_backend": args.distributed_executor_backend,
        "enforce_eager": args.enforce_eager, "generation_config": args.generation_config,
        "kv_transfer_config": parse_kv_transfer_config(args.kv_transfer_config),
        "kv_events_config": parse_json_object("--kv-events-config", args.kv_events_config),
        **data_parallel_kwargs(args),
        "additional_config": parse_json_config("--additional-config", args.additional_config,
                                               ADDITIONAL_CONFIG_KEYS) or {},
    }
    return EngineArgs(**{k: v for k, v in kwargs.items() if v is not None})


def flag_named_error(error: Exception) -> str:
    """Write EngineArgs field names in a config error as flags: a leading `dtype ...` and
    any `max_model_len=...` become `--dtype ...` and `--max-model-len=...`."""
    from vllm.engine.arg_utils import EngineArgs
    fields = EngineArgs.field_names()

    def as_flag(match: re.Match) -> str:
        name = match.group(1)
        return "--" + name.replace("_", "-") if name in fields else name

    message = re.sub(r"\b([a-z]+(?:_[a-z]+)+)\b(?==)", as_flag, str(error))
    return re.sub(r"^([a-z_]+)\b", as_flag, message)
