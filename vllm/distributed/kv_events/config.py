"""`--kv-events-config`: vLLM's KVEventsConfig fields, validated once at start-up."""
from dataclasses import dataclass
from typing import Any, Optional

from vllm.config import ConfigError

FLAG = "--kv-events-config"
PUBLISHERS = ("null", "zmq")
ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
_TYPES = {"enable_kv_cache_events": bool, "publisher": str, "endpoint": str,
          "replay_endpoint": str, "buffer_steps": int, "hwm": int, "max_queue_size": int,
          "topic": str}


@dataclass
class KVEventsConfig:
    enable_kv_cache_events: bool = False
    publisher: Optional[str] = None  # "zmq" when events are enabled, else "null"
    endpoint: str = "tcp://*:5557"  # bound as given (vLLM connects to non-wildcard ones)
    replay_endpoint: Optional[str] = None  # a ROUTER socket resending missed batches
    buffer_steps: int = 10_000  # batches kept for replay
    hwm: int = 100_000  # the PUB socket's send high-water mark (0: none)
    max_queue_size: int = 100_000  # batches waiting for the publisher thread
    topic: str = ""

    @property
    def publishes(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "KVEventsConfig":
        unknown = sorted(set(values) - set(_TYPES))
        if unknown:
            raise ConfigError(f"{FLAG}: unknown key {unknown[0]!r} (known keys: "
                              f"{', '.join(sorted(_TYPES))})")
        config = cls(**{k: v for k, v in values.items() if v is not None})
        config.validate()
        return config

    def validate(self) -> None:
        for key, wanted in _TYPES.items():
            value = getattr(self, key)
            if value is not None and type(value) is not wanted:
                raise ConfigError(f"{FLAG}: {key!r} must be {wanted.__name__}, "
                                  f"got {value!r}")
        if self.publisher is None:
            self.publisher = "zmq" if self.enable_kv_cache_events else "null"
        if self.publisher not in PUBLISHERS:
            raise ConfigError(f"{FLAG}: publisher must be one of {', '.join(PUBLISHERS)}, "
                              f"got {self.publisher!r}")
        check_endpoint("endpoint", self.endpoint)
        if self.replay_endpoint is not None:
            check_endpoint("replay_endpoint", self.replay_endpoint)
            if self.replay_endpoint == self.endpoint:
                raise ConfigError(f"{FLAG}: replay_endpoint must differ from endpoint")
        for name, least in (("buffer_steps", 0), ("hwm", 0), ("max_queue_size", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"{FLAG}: {name} must be at least {least}, "
                                  f"got {getattr(self, name)}")


def check_endpoint(name: str, endpoint: str) -> None:
    scheme = next((s for s in ENDPOINT_SCHEMES if endpoint.startswith(s)), None)
    if scheme is None:
        raise ConfigError(f"{FLAG}: {name} {endpoint!r} must start with one of "
                          f"{', '.join(ENDPOINT_SCHEMES)}")
    rest = endpoint[len(scheme):]
    if scheme != "tcp://":
        if not rest:
            raise ConfigError(f"{FLAG}: {name} {endpoint!r} names no path")
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{FLAG}: {name} {endpoint!r} must be tcp://HOST:PORT")


def endpoint_for_rank(endpoint: str, data_parallel_rank: int) -> str:
    """Each data-parallel rank publishes on its own endpoint, as in vLLM: the port plus
    the rank for tcp, a `_dp{rank}` suffix for ipc and inproc."""
    if data_parallel_rank == 0:
        return endpoint
    if not endpoint.startswith("tcp://"):
        return f"{endpoint}_dp{data_parallel_rank}"
    base, _, port = endpoint.rpartition(":")
    shifted = int(port) + data_parallel_rank
    if shifted > 65535:
        raise ConfigError(f"{FLAG}: {endpoint!r} shifted by data-parallel rank "
                          f"{data_parallel_rank} is past port 65535")
    return f"{base}:{shifted}"


def resolve_kv_events_config(value) -> Optional[KVEventsConfig]:
    """A dict (as --kv-events-config or LLM(kv_events_config=...) gives) or a
    KVEventsConfig becomes a validated KVEventsConfig."""
    if value is None:
        return None
    if isinstance(value, KVEventsConfig):
        value.validate()
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{FLAG}: expected a JSON object, got {type(value).__name__}")
    return KVEventsConfig.from_dict(value)
