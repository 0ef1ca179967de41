"""The block pool's KV events against its prefix index, the block hash scheme, and
--kv-events-config validation (no model involved)."""
import os
import subprocess
import sys

import msgspec
import pytest

from vllm.config import ConfigError
from vllm.core.block_hash import ROOT_HASH, chained_block_hashes
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from vllm.core.request import Request
from vllm.distributed.kv_events.config import (KVEventsConfig, endpoint_for_rank,
                                               resolve_kv_events_config)
from vllm.sampling_params import SamplingParams

BLOCK_SIZE = 4


def make_request(request_id, token_ids):
    return Request(request_id, list(token_ids), SamplingParams(max_tokens=4), None)


def run_prompt(manager, request_id, token_ids):
    request = make_request(request_id, token_ids)
    hits, num_hit = manager.get_computed_blocks(request)
    assert manager.allocate_slots(request, request.num_tokens - num_hit, hits) is not None
    manager.free(request)
    return request


def replay(events, cached=None) -> set[int]:
    cached = set() if cached is None else cached
    for event in events:
        if isinstance(event, BlockStored):
            cached.update(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            cached.difference_update(event.block_hashes)
        else:
            cached.clear()
    return cached


def recomputed(event: BlockStored) -> list[int]:
    """An event's hashes from its own token ids and parent (vllm.core.block_hash only)."""
    from vllm.core.block_hash import hash_block
    parent = ROOT_HASH if event.parent_block_hash is None else event.parent_block_hash
    hashes = []
    for start in range(0, len(event.token_ids), event.block_size):
        parent = hash_block(parent, tuple(event.token_ids[start:start + event.block_size]))
        hashes.append(parent)
    return hashes


def test_stored_events_carry_the_chain_and_match_the_index():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE, record_events=True)
    first = run_prompt(manager, "a", range(10))  # 2 full blocks
    events = manager.take_events()
    assert [type(e) for e in events] == [BlockStored]
    assert events[0].block_hashes == first.block_hashes[:2]
    assert events[0].parent_block_hash is None
    assert events[0].token_ids == list(range(8)) and events[0].block_size == BLOCK_SIZE
    # A shared prefix: only the new block is stored, its parent is the shared block.
    second = run_prompt(manager, "b", list(range(8)) + [50, 51, 52, 53, 54])
    (stored,) = manager.take_events()
    assert stored.block_hashes == [second.block_hashes[2]]
    assert stored.parent_block_hash == first.block_hashes[1]
    assert stored.token_ids == [50, 51, 52, 53]
    for event in (events[0], stored):
        assert recomputed(event) == event.block_hashes
    assert replay(events + [stored]) == manager.block_pool.cached_hashes()


def test_evictions_are_removed_events_and_reset_clears():
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE, record_events=True)
    seen = []
    for index in range(6):  # each prompt fills 3 blocks of a 4-block pool
        run_prompt(manager, str(index), [index * 100 + t for t in range(13)])
        seen += manager.take_events()
    assert any(isinstance(e, BlockRemoved) for e in seen)
    assert replay(seen) == manager.block_pool.cached_hashes() != set()
    assert manager.block_pool.reset_prefix_cache()
    assert manager.take_events() == [AllBlocksCleared()]
    assert manager.block_pool.cached_hashes() == set()


def test_no_events_are_kept_unless_recording():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    run_prompt(manager, "a", range(9))
    assert manager.take_events() == []


def test_chained_hashes_from_token_ids_equal_the_pools():
    tokens = list(range(1000, 1023))
    request = run_prompt(KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE), "a", tokens)
    assert chained_block_hashes(tokens, BLOCK_SIZE) == request.block_hashes[:5]


def test_block_hashes_do_not_depend_on_the_process_hash_seed():
    import vllm.core.block_hash as scheme  # loaded alone: importing vllm would be slow
    code = ("import importlib.util as u; s = u.spec_from_file_location('h', "
            f"{scheme.__file__!r}); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.chained_block_hashes(list(range(40)), 16))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "random")}
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(chained_block_hashes(list(range(40)), 16))


def test_wire_format_is_vllms_tagged_maps():
    batch = KVEventBatch(ts=1.5, events=[
        BlockStored([7, 8], None, [1, 2, 3, 4], 2, None, "GPU", None),
        BlockRemoved([7], "GPU"), AllBlocksCleared()], data_parallel_rank=0)
    plain = msgspec.msgpack.decode(msgspec.msgpack.encode(batch))  # no schema: raw maps
    assert plain == {"ts": 1.5, "data_parallel_rank": 0, "events": [
        {"type": "BlockStored", "block_hashes": [7, 8], "parent_block_hash": None,
         "token_ids": [1, 2, 3, 4], "block_size": 2, "lora_id": None, "medium": "GPU",
         "lora_name": None},
        {"type": "BlockRemoved", "block_hashes": [7], "medium": "GPU"},
        {"type": "AllBlocksCleared"}]}


def test_vllm_defaults_and_publisher_choice():
    assert KVEventsConfig.from_dict({}).publisher == "null"
    config = KVEventsConfig.from_dict({"enable_kv_cache_events": True})
    assert config.publisher == "zmq" and config.endpoint == "tcp://*:5557"
    assert config.publishes
    assert not KVEventsConfig.from_dict({"enable_kv_cache_events": True,
                                         "publisher": "null"}).publishes
    assert resolve_kv_events_config(None) is None


def test_endpoints_shift_by_data_parallel_rank():
    assert endpoint_for_rank("tcp://127.0.0.1:5557", 0) == "tcp://127.0.0.1:5557"
    assert endpoint_for_rank("tcp://127.0.0.1:5557", 2) == "tcp://127.0.0.1:5559"
    assert endpoint_for_rank("ipc:///tmp/kv", 1) == "ipc:///tmp/kv_dp1"
    with pytest.raises(ConfigError, match="past port 65535"):
        endpoint_for_rank("tcp://127.0.0.1:65535", 1)


@pytest.mark.parametrize("values, fragment", [
    ({"enable_kv_cache_events": True, "bogus": 1}, "unknown key 'bogus'"),
    ({"publisher": "kafka"}, "publisher must be one of null, zmq"),
    ({"enable_kv_cache_events": "yes"}, "'enable_kv_cache_events' must be bool"),
    ({"hwm": 1.5}, "'hwm' must be int"),
    ({"buffer_steps": True}, "'buffer_steps' must be int"),
    ({"max_queue_size": 0}, "max_queue_size must be at least 1"),
    ({"endpoint": "http://x:1"}, "must start with one of tcp://"),
    ({"endpoint": "tcp://127.0.0.1"}, "must be tcp://HOST:PORT"),
    ({"endpoint": "tcp://127.0.0.1:70000"}, "must be tcp://HOST:PORT"),
    ({"replay_endpoint": "tcp://*:5557"}, "replay_endpoint must differ from endpoint"),
])
def test_bad_configs_are_one_line_config_errors(values, fragment):
    with pytest.raises(ConfigError) as raised:
        KVEventsConfig.from_dict(values)
    message = str(raised.value)
    assert fragment in message and "\n" not in message
    assert message.startswith("--kv-events-config: ")


def test_a_config_object_is_checked_too():
    with pytest.raises(ConfigError, match="'hwm' must be int, got 'many'"):
        resolve_kv_events_config(KVEventsConfig(enable_kv_cache_events=True, hwm="many"))


def test_a_non_object_is_refused():
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        resolve_kv_events_config([1])
