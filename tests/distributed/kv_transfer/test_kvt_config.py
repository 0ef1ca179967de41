"""--kv-transfer-config validation and the connector registry (no model is loaded)."""
import pytest

from vllm.config import ConfigError
from vllm.distributed.kv_transfer.config import DEFAULT_KV_PORT, KVTransferConfig
from vllm.distributed.kv_transfer.factory import (create_scheduler_connector,
                                                  create_worker_connector,
                                                  get_connector_class,
                                                  registered_connectors)
from vllm.distributed.kv_transfer.push.connector import PushConnector

BASE = {"kv_connector": "PushConnector", "kv_role": "kv_producer"}


def config(**changes) -> KVTransferConfig:
    return KVTransferConfig.from_dict({**BASE, **changes})


def raises_naming(values: dict, *words: str) -> str:
    with pytest.raises(ConfigError) as info:
        KVTransferConfig.from_dict(values)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# ---- accepted ------------------------------------------------------------------------------
def test_all_vllm_fields_are_accepted():
    values = {"kv_connector": "PushConnector", "kv_role": "kv_consumer", "kv_rank": 1,
              "kv_parallel_size": 2, "kv_ip": "10.0.0.7", "kv_port": 20010,
              "kv_buffer_device": "npu", "kv_buffer_size": 5e9, "engine_id": "decode-0",
              "kv_connector_extra_config": {"kv_lease_s": 3},
              "kv_connector_module_path": None, "kv_load_failure_policy": "fail"}
    parsed = KVTransferConfig.from_dict(values)
    expected = {**values, "kv_connector_module_path": None}
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    assert parsed.is_consumer and not parsed.is_producer
    assert parsed.extra("kv_lease_s", 60) == 3
    assert parsed.extra("absent", "default") == "default"


def test_defaults_and_nulls():
    parsed = KVTransferConfig.from_dict({**BASE, "kv_port": None, "kv_rank": None,
                                         "engine_id": None})
    assert parsed.kv_port == DEFAULT_KV_PORT
    assert parsed.kv_load_failure_policy == "recompute"
    assert parsed.kv_connector_extra_config == {}
    assert isinstance(parsed.engine_id, str) and parsed.engine_id
    other = KVTransferConfig.from_dict(dict(BASE))
    assert other.engine_id != parsed.engine_id, "engine ids must differ by default"


def test_seed_string_port_and_numeric_engine_id():
    parsed = config(kv_port="20001", engine_id=7)
    assert parsed.kv_port == 20001 and isinstance(parsed.kv_port, int)
    assert parsed.engine_id == "7"


@pytest.mark.parametrize("role,producer,consumer", [
    ("kv_producer", True, False), ("kv_consumer", False, True), ("kv_both", True, True)])
def test_roles(role, producer, consumer):
    parsed = config(kv_role=role)
    assert (parsed.is_producer, parsed.is_consumer) == (producer, consumer)


@pytest.mark.parametrize("port", [1, 65534, "443"])
def test_port_bounds_accepted(port):
    assert config(kv_port=port).kv_port == int(port)


# ---- rejected ------------------------------------------------------------------------------
def test_unknown_role():
    raises_naming({**BASE, "kv_role": "kv_decoder"}, "kv_role", "kv_decoder", "kv_producer")


def test_unknown_policy():
    raises_naming({**BASE, "kv_load_failure_policy": "retry"}, "kv_load_failure_policy",
                  "retry", "recompute")


@pytest.mark.parametrize("port", ["abc", 0, 70000, 65535, -5, [1]])
def test_bad_port(port):
    raises_naming({**BASE, "kv_port": port}, "kv_port")


def test_unknown_keys_are_named():
    raises_naming({**BASE, "kv_rol": "x", "buffer": 1}, "unknown", "kv_rol", "buffer")


@pytest.mark.parametrize("missing", ["kv_connector", "kv_role"])
def test_missing_required(missing):
    values = dict(BASE)
    del values[missing]
    raises_naming(values, missing, "required")
    raises_naming({**values, missing: ""}, missing)


def test_bad_parallel_size_and_extra_config():
    raises_naming({**BASE, "kv_parallel_size": 0}, "kv_parallel_size")
    raises_naming({**BASE, "kv_connector_extra_config": ["kv_lease_s"]},
                  "kv_connector_extra_config")


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        KVTransferConfig.from_dict({**BASE, "kv_role": "nope"})


# ---- the registry --------------------------------------------------------------------------
def test_registered_names_resolve_to_push_connector():
    assert "PushConnector" in registered_connectors()
    assert get_connector_class(config()) is PushConnector
    assert get_connector_class(config(kv_connector="LLMDataDistCMgrConnector")) \
        is PushConnector


def test_unknown_connector_lists_known_names():
    with pytest.raises(ConfigError) as info:
        get_connector_class(config(kv_connector="NixlConnectr"))
    message = str(info.value)
    assert "NixlConnectr" in message
    for name in registered_connectors():
        assert name in message


def test_module_path_that_does_not_import():
    path = "no_such_package_kvt.connectors"
    with pytest.raises(ConfigError) as info:
        get_connector_class(config(kv_connector="Whatever", kv_connector_module_path=path))
    assert path in str(info.value)


def test_module_path_without_the_class():
    with pytest.raises(ConfigError) as info:
        get_connector_class(config(kv_connector="Missing",
                                   kv_connector_module_path="kvt_custom_connector"))
    assert "Missing" in str(info.value) and "kvt_custom_connector" in str(info.value)


def test_module_path_custom_connector_class():
    import kvt_custom_connector
    parsed = config(kv_connector="KvtCustomConnector",
                    kv_connector_module_path="kvt_custom_connector")
    assert get_connector_class(parsed) is kvt_custom_connector.KvtCustomConnector

    class FakeVllmConfig:
        kv_transfer_config = parsed

    scheduler = create_scheduler_connector(FakeVllmConfig)
    worker = create_worker_connector(FakeVllmConfig, 3)
    assert isinstance(scheduler, kvt_custom_connector.KvtCustomConnector.Scheduler)
    assert isinstance(worker, kvt_custom_connector.KvtCustomConnector.Worker)
    assert worker.rank == 3


def test_no_config_no_connector():
    class NoKV:
        kv_transfer_config = None

    assert create_scheduler_connector(NoKV) is None
    assert create_worker_connector(NoKV, 0) is None


# ---- through EngineArgs --------------------------------------------------------------------
@pytest.mark.parametrize("bad,word", [
    ({"kv_connector": "PushConnector", "kv_role": "decoder"}, "kv_role"),
    ({"kv_connector": "PushConnector", "kv_role": "kv_consumer", "kv_port": "abc"},
     "kv_port"),
    ({"kv_connector": "NoSuchConnector", "kv_role": "kv_consumer"}, "NoSuchConnector"),
    ({"kv_role": "kv_consumer"}, "kv_connector"),
])
def test_engine_args_reject_bad_kv_transfer_config(bad, word):
    from vllm.engine.arg_utils import EngineArgs
    with pytest.raises(ConfigError) as info:
        EngineArgs(model=None, max_model_len=512, kv_transfer_config=bad
                   ).create_engine_config()
    assert word in str(info.value)


def test_engine_args_accept_good_kv_transfer_config():
    from vllm.engine.arg_utils import EngineArgs
    vllm_config = EngineArgs(model=None, max_model_len=512, kv_transfer_config={
        "kv_connector": "LLMDataDistCMgrConnector", "kv_role": "kv_both",
        "kv_port": "20001"}).create_engine_config()
    parsed = vllm_config.kv_transfer_config
    assert isinstance(parsed, KVTransferConfig)
    assert parsed.kv_port == 20001 and parsed.is_producer and parsed.is_consumer
