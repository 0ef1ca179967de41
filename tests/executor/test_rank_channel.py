"""The executor's ZMQ channel: one pickled call reaches every rank, replies come back."""

import pytest

from free_ports import free_port_range
from vllm.executor.rank_channel import (ExecutorChannel, RankChannel, RpcCall,
                                        pinned_base_port)


def free_port_block(size: int) -> int:
    """A base port whose next `size` ports are free and not handed out before."""
    return free_port_range(size)


def round_trip(executor: ExecutorChannel, world_size: int) -> None:
    ranks = [RankChannel(executor.endpoints, rank) for rank in range(world_size)]
    try:
        executor.broadcast(RpcCall(7, "echo", (1, [2]), {"x": 3}, None))
        for rank, channel in enumerate(ranks):
            call = channel.receive(timeout_ms=5000)
            assert call == RpcCall(7, "echo", (1, [2]), {"x": 3}, None)
            channel.reply(call.call_id, True, rank * 10)
        replies = sorted((executor.poll_reply(5000) for _ in ranks), key=lambda r: r.rank)
        assert [(r.rank, r.call_id, r.ok, r.value) for r in replies] == [
            (rank, 7, True, rank * 10) for rank in range(world_size)]
        assert ranks[0].receive(timeout_ms=10) is None
    finally:
        for channel in ranks:
            channel.close(linger_ms=0)


def test_free_ports_round_trip():
    first, second = ExecutorChannel(3, "127.0.0.1"), ExecutorChannel(3, "127.0.0.1")
    try:
        assert set(first.endpoints.call_addresses).isdisjoint(second.endpoints.call_addresses)
        round_trip(first, 3)
        round_trip(second, 3)
    finally:
        first.close()
        second.close()


def test_vllm_port_pins_the_ports(monkeypatch):
    base = free_port_block(4)
    monkeypatch.setenv("VLLM_PORT", str(base))
    channel = ExecutorChannel(2, "127.0.0.1", pinned_base_port())
    try:
        assert channel.endpoints.reply_address == f"tcp://127.0.0.1:{base + 1}"
        assert channel.endpoints.call_addresses == [f"tcp://127.0.0.1:{base + 2}",
                                                    f"tcp://127.0.0.1:{base + 3}"]
        round_trip(channel, 2)
    finally:
        channel.close()


@pytest.mark.parametrize("value, match", [("abc", "must be a port number"),
                                          ("0", r"must be in \[1, 65000\]")])
def test_bad_vllm_port(monkeypatch, value, match):
    monkeypatch.setenv("VLLM_PORT", value)
    with pytest.raises(ValueError, match=match):
        pinned_base_port()


def test_unset_vllm_port(monkeypatch):
    monkeypatch.delenv("VLLM_PORT", raising=False)
    assert pinned_base_port() is None


def test_broadcast_reaches_connected_ranks_and_names_the_missing_one():
    executor = ExecutorChannel(2, "127.0.0.1")
    rank0 = RankChannel(executor.endpoints, 0)
    try:
        with pytest.raises(ConnectionError, match=r"rank\(s\) \[1\] are not connected"):
            executor.broadcast(RpcCall(1, "ping", (), {}, None), connect_timeout_ms=200)
        assert rank0.receive(timeout_ms=5000).method == "ping"
    finally:
        rank0.close(linger_ms=0)
        executor.close()
