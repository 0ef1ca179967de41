"""A KV event subscriber written from vLLM's wire format alone (plain msgpack maps, no
structs of ours): PUB frames [topic, seq, payload], replay through a DEALER socket."""
import contextlib
import socket
import time

import msgspec
import zmq

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def free_endpoints(count: int, rank: int = 0) -> list[str]:
    """count distinct tcp endpoints on 127.0.0.1 whose ports, and those ports plus the
    data-parallel rank, are free (each probe stays bound until all are chosen, so the
    kernel cannot hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(100 * count):
            probe = stack.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            shifted = port + rank
            if rank == 0 or (shifted < 65536 and shifted not in ports and _is_free(shifted)):
                ports.append(port)
            if len(ports) == count:
                return [f"tcp://127.0.0.1:{p}" for p in ports]
    raise RuntimeError(f"no {count} free endpoints")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


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
