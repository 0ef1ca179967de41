"""Connectors by name through a lazy registry, or from any module by path."""
import importlib
from typing import Optional

from vllm.config import ConfigError
from vllm.distributed.kv_transfer.config import KVTransferConfig

# name -> (module, class); modules are imported only when their connector is chosen.
_REGISTRY: dict[str, tuple[str, str]] = {
    "PushConnector": ("vllm.distributed.kv_transfer.push.connector", "PushConnector"),
    # The seeds' connector name: on this engine the push connector plays its part.
    "LLMDataDistCMgrConnector": ("vllm.distributed.kv_transfer.push.connector",
                                 "PushConnector"),
}


def registered_connectors() -> list[str]:
    return sorted(_REGISTRY)


def register_connector(name: str, module: str, class_name: str) -> None:
    _REGISTRY[name] = (module, class_name)


def get_connector_class(config: KVTransferConfig) -> type:
    """The connector class named by the config; ConfigError when it cannot be found."""
    if config.kv_connector_module_path:
        return _load(config.kv_connector_module_path, config.kv_connector,
                     hint=_hint(config.kv_connector))
    if config.kv_connector not in _REGISTRY:
        raise ConfigError(f"--kv-transfer-config: unknown kv_connector "
                          f"{config.kv_connector!r}; known: {', '.join(registered_connectors())}"
                          " (or name a module with kv_connector_module_path)")
    module, class_name = _REGISTRY[config.kv_connector]
    return _load(module, class_name)


def _load(module_path: str, class_name: str, hint: str = "") -> type:
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise ConfigError(f"--kv-transfer-config: cannot import kv_connector_module_path "
                          f"{module_path!r} ({error}){hint}") from None
    connector = getattr(module, class_name, None)
    if connector is None:
        raise ConfigError(f"--kv-transfer-config: module {module_path!r} has no "
                          f"connector class {class_name!r}")
    return connector


def _hint(name: str) -> str:
    if name in _REGISTRY:
        return f"; drop kv_connector_module_path to use the in-tree {name}"
    return ""


def create_scheduler_connector(vllm_config) -> Optional[object]:
    config = vllm_config.kv_transfer_config
    if config is None:
        return None
    return get_connector_class(config).Scheduler(vllm_config)


def create_worker_connector(vllm_config, rank: int) -> Optional[object]:
    config = vllm_config.kv_transfer_config
    if config is None:
        return None
    return get_connector_class(config).Worker(vllm_config, rank)
