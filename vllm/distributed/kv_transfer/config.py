"""`--kv-transfer-config`: vLLM's fields, validated once at start-up."""
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm.config import ConfigError
from vllm.distributed.network import internal_host, resolves_to_wildcard
from vllm.kv_transfer_params import KV_ROLES

KV_LOAD_FAILURE_POLICIES = ("recompute", "fail")
DEFAULT_KV_PORT = 14579


@dataclass
class KVTransferConfig:
    kv_connector: str
    kv_role: str
    kv_rank: Optional[int] = None
    kv_parallel_size: int = 1
    kv_ip: str = "127.0.0.1"
    kv_port: int = DEFAULT_KV_PORT
    kv_buffer_device: str = "cpu"
    kv_buffer_size: float = 1e9
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    kv_connector_extra_config: dict[str, Any] = field(default_factory=dict)
    kv_connector_module_path: Optional[str] = None
    kv_load_failure_policy: str = "recompute"

    @property
    def is_producer(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def is_consumer(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")

    def extra(self, key: str, default: Any) -> Any:
        return self.kv_connector_extra_config.get(key, default)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "KVTransferConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"--kv-transfer-config: unknown keys {unknown}")
        if not values.get("kv_connector"):
            raise ConfigError("--kv-transfer-config: 'kv_connector' is required")
        if not values.get("kv_role"):
            raise ConfigError("--kv-transfer-config: 'kv_role' is required "
                              f"(one of {', '.join(KV_ROLES)})")
        config = cls(**{k: v for k, v in values.items() if v is not None})
        config.kv_port = _port("kv_port", config.kv_port)
        if config.kv_ip is not None and resolves_to_wildcard(str(config.kv_ip)):
            raise ConfigError(f"--kv-transfer-config: kv_ip {config.kv_ip!r} would listen on "
                              "every interface and cannot be told to peers; give this "
                              "host's address")
        config.kv_ip = internal_host(config.kv_ip)  # bound and told to peers alike
        config.engine_id = str(config.engine_id)
        config.validate()
        return config

    def validate(self) -> None:
        if self.kv_role not in KV_ROLES:
            raise ConfigError(f"--kv-transfer-config: kv_role {self.kv_role!r} is not one of "
                              f"{', '.join(KV_ROLES)}")
        if self.kv_load_failure_policy not in KV_LOAD_FAILURE_POLICIES:
            raise ConfigError("--kv-transfer-config: kv_load_failure_policy "
                              f"{self.kv_load_failure_policy!r} is not one of "
                              f"{', '.join(KV_LOAD_FAILURE_POLICIES)}")
        if self.kv_parallel_size < 1:
            raise ConfigError("--kv-transfer-config: kv_parallel_size must be >= 1")
        if not isinstance(self.kv_connector_extra_config, dict):
            raise ConfigError("--kv-transfer-config: kv_connector_extra_config must be an "
                              "object")


def _port(name: str, value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--kv-transfer-config: {name} must be a port number, "
                          f"got {value!r}") from None
    if not 1 <= port <= 65534:
        raise ConfigError(f"--kv-transfer-config: {name} {port} is out of range 1-65534 "
                          "(the connector also uses the port after it)")
    return port
