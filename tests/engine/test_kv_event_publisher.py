"""The ZMQ publisher alone: publish() never blocks and counts what a full queue drops,
sequence numbers stay contiguous, replay resends kept batches, a taken port is refused."""
import time

import msgspec
import pytest

from kv_event_subscriber import Subscriber, free_endpoints
from vllm.config import ConfigError
from vllm.core.kv_events import AllBlocksCleared, KVEventBatch
from vllm.distributed.kv_events.config import KVEventsConfig, endpoint_for_rank
from vllm.distributed.kv_events.publisher import ZmqEventPublisher


def config(**values) -> KVEventsConfig:
    return KVEventsConfig.from_dict({"enable_kv_cache_events": True, **values})


def test_a_full_queue_drops_and_counts_without_blocking():
    endpoint, replay = free_endpoints(2, rank=3)
    publisher = ZmqEventPublisher(config(endpoint=endpoint, replay_endpoint=replay,
                                         max_queue_size=1, topic="t"), data_parallel_rank=3)
    subscriber = Subscriber(endpoint_for_rank(endpoint, 3), endpoint_for_rank(replay, 3),
                            "t")  # rank 3 publishes 3 ports up
    try:
        start = time.perf_counter()
        for index in range(1000):
            publisher.publish(KVEventBatch(ts=float(index), events=[AllBlocksCleared()]))
        assert time.perf_counter() - start < 5
        assert publisher.num_dropped > 0
        time.sleep(1)
        batches = subscriber.batches()  # asserts seq 0, 1, 2, ... without a gap
        assert len(batches) == 1000 - publisher.num_dropped
        assert [b["ts"] for b in batches] == sorted(b["ts"] for b in batches)
        assert {b["data_parallel_rank"] for b in batches} == {3}
    finally:
        subscriber.close()
        publisher.shutdown()
    assert not publisher._thread.is_alive()


def test_a_taken_endpoint_is_a_config_error():
    (endpoint,) = free_endpoints(1)
    first = ZmqEventPublisher(config(endpoint=endpoint))
    try:
        with pytest.raises(ConfigError, match=f"cannot bind endpoint {endpoint}"):
            ZmqEventPublisher(config(endpoint=endpoint))
    finally:
        first.shutdown()


def test_payload_decodes_with_our_structs_too():
    batch = KVEventBatch(ts=2.0, events=[AllBlocksCleared()], data_parallel_rank=1)
    decoded = msgspec.msgpack.Decoder(KVEventBatch).decode(msgspec.msgpack.encode(batch))
    assert decoded == batch
