"""A request's kv_transfer_params and an instance's KV info: their keys, written once.

Torch-free: the proxy (vllm/disagg), the push connector and the API server import it.
"""
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

KV_TRANSFER_PARAMS = "kv_transfer_params"  # the request body field and EngineCoreRequest's
DO_REMOTE_DECODE = "do_remote_decode"  # prefill instance: keep the KV for a consumer
DO_REMOTE_PREFILL = "do_remote_prefill"  # decode instance: the prompt's KV comes from afar
REMOTE_ENGINE_ID = "remote_engine_id"
REMOTE_HOST = "remote_host"
REMOTE_PORT = "remote_port"
REMOTE_TP_SIZE = "remote_tp_size"
TRANSFER_ID = "request_id"  # the proxy's id, which both instances key the transfer by
KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")


@dataclass(frozen=True)
class KvInfo:
    """An instance's KV connector endpoint, as its /v1/kv_transfer/info reports it."""

    engine_id: str
    kv_role: str
    kv_host: str
    kv_port: int
    tensor_parallel_size: int

    @classmethod
    def from_json(cls, data: Any) -> "KvInfo":
        """Parse the info body; raises ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("kv_transfer info is not a JSON object")
        _require(data, "engine_id", str, lambda v: bool(v))
        _require(data, "kv_role", str, lambda v: v in KV_ROLES)
        _require(data, "kv_host", str, lambda v: bool(v))
        _require(data, "kv_port", int, lambda v: 0 < v < 65536)
        _require(data, "tensor_parallel_size", int, lambda v: v >= 1)
        return cls(data["engine_id"], data["kv_role"], data["kv_host"], data["kv_port"],
                   data["tensor_parallel_size"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _require(data: dict, name: str, kind: type, valid: Callable[[Any], bool]) -> None:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or not valid(value):
        raise ValueError(f"kv_transfer info field {name!r} is invalid: {value!r}")


def producer_params() -> dict[str, Any]:
    """For the prefill instance: compute the prompt and keep its KV for a consumer."""
    return {DO_REMOTE_DECODE: True, DO_REMOTE_PREFILL: False}


def consumer_params(producer: KvInfo) -> dict[str, Any]:
    """For the decode instance: the prompt's KV comes from `producer`."""
    return {DO_REMOTE_PREFILL: True, DO_REMOTE_DECODE: False,
            REMOTE_ENGINE_ID: producer.engine_id, REMOTE_HOST: producer.kv_host,
            REMOTE_PORT: producer.kv_port, REMOTE_TP_SIZE: producer.tensor_parallel_size}


def computed_locally(params: dict[str, Any]) -> dict[str, Any]:
    """The params once the prompt's KV is here (received, or to be recomputed)."""
    return {**params, DO_REMOTE_PREFILL: False}


def producer_address(params: dict[str, Any]) -> Optional[str]:
    host, port = params.get(REMOTE_HOST), params.get(REMOTE_PORT)
    if not host or not port:
        return None
    return f"{host}:{port}"
