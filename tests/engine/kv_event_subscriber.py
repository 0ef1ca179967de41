"""A KV event subscriber written from vLLM's wire format alone (plain msgpack maps, no
structs of ours): PUB frames [topic, seq, payload], replay through a DEALER socket."""
import time

import msgspec
import zmq

from free_ports import free_port_range

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def free_endpoints(count: int, rank: int = 0) -> list[str]:
    """count distinct tcp endpoints on 127.0.0.1 whose ports, and those ports plus the
    data-parallel rank, are free (tests/free_ports.py)."""
    return [f"tcp://127.0.0.1:{free_port_range(rank + 1)}" for _ in range(count)]


class Subscriber:

    def __init__(self, endpoint: str, replay_endpoint: str, topic: str):
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sub.connect(endpoint)
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self.received: dict[int, bytes] = {}  # seq -> payload, as published

    def drain(self, quiet_s: float = 1.5) -> None:
        """Receive until nothing came for quiet_s."""
        while self.sub.poll(int(quiet_s * 1000)):
            topic, seq, payload = self.sub.recv_multipart()
            assert topic == self.topic
            self.received[int.from_bytes(seq, "big")] = payload

    def replayed(self, start: int = 0) -> dict[int, bytes]:
        dealer = self.context.socket(zmq.DEALER)
        dealer.connect(self.replay_endpoint)
        dealer.send_multipart((b"", start.to_bytes(8, "big")))
        batches = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and dealer.poll(30_000):
            _, seq, payload = dealer.recv_multipart()
            if seq == END_SEQ:
                break
            batches[int.from_bytes(seq, "big")] = payload
        dealer.close(linger=0)
        return batches

    def batches(self) -> list[dict]:
        """Every batch from seq 0 in order: what the SUB socket missed (it joined late)
        comes from replay, and what both saw must be the same bytes."""
        replayed = self.replayed()
        for seq, payload in self.received.items():
            assert replayed[seq] == payload
        ordered = {**replayed, **self.received}
        assert sorted(ordered) == list(range(len(ordered))), "a gap in the sequence"
        return [msgspec.msgpack.decode(ordered[seq]) for seq in sorted(ordered)]

    def close(self) -> None:
        self.sub.close(linger=0)
        self.context.term()


def apply(events: list[dict], cached: set[int]) -> set[int]:
    for event in events:
        if event["type"] == "BlockStored":
            cached.update(event["block_hashes"])
        elif event["type"] == "BlockRemoved":
            cached.difference_update(event["block_hashes"])
        elif event["type"] == "AllBlocksCleared":
            cached.clear()
        else:
            raise AssertionError(f"unknown event {event}")
    return cached


def all_events(batches: list[dict]) -> list[dict]:
    return [event for batch in batches for event in batch["events"]]
