"""PeerWatch: a control-plane peer that dies, freezes or never listens is reported within
its timeout, and one that comes back on the same address is trusted again."""
import os
import signal
import subprocess
import sys
import time

import pytest

from kvt_harness import HOST, dead_port, free_port_pair
from vllm.distributed.kv_transfer.control import ControlSender
from vllm.distributed.kv_transfer.messages import ConsumerAck

TIMEOUT_S = 0.6
PEER = ("import sys, time, zmq; inbox = zmq.Context().socket(zmq.PULL); "
        "inbox.bind(f'tcp://{sys.argv[1]}'); print('up', flush=True); time.sleep(300)")


class Peer:
    """A control socket in its own process, so that it can be stopped and killed."""

    def __init__(self, address: str):
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, address],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "up"

    def signal(self, sig: int) -> float:
        os.kill(self.proc.pid, sig)
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def sender():
    sender = ControlSender()
    watch = sender.watch_peers(TIMEOUT_S)
    yield sender, watch
    sender.close()
    sender.context.term()


@pytest.fixture
def peers():
    started = []

    def start(address):
        started.append(Peer(address))
        return started[-1]

    yield start
    for peer in started:
        peer.close()


def send(sender, address: str) -> float:
    assert sender.send(address, ConsumerAck("k"))
    return time.monotonic()


def wait_for(watch, address: str, since: float, limit_s: float):
    """(what trouble() said first, after how long), polling like an engine core."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        now = time.monotonic()
        watch.update(now)
        trouble = watch.trouble(address, since, now)
        if trouble is not None:
            return trouble, now - start
        time.sleep(0.01)
    return None, limit_s


def test_killed_peer_is_reported_at_once(sender, peers):
    sender, watch = sender
    address = f"{HOST}:{free_port_pair()}"
    peer = peers(address)
    sent = send(sender, address)
    assert wait_for(watch, address, sent, 0.5)[0] is None  # connected, answering
    killed = peer.signal(signal.SIGKILL)
    trouble, _ = wait_for(watch, address, sent, 5)
    assert trouble == f"the connection to {address} broke"
    assert time.monotonic() - killed < TIMEOUT_S, "noticed only by heartbeat timeout"
    assert watch.monitors(), "the engine core could not wake on the event"


def test_frozen_peer_is_reported_by_heartbeat(sender, peers):
    """A stopped process (as a hung host) keeps its TCP connection open: only the
    missing heartbeat replies tell."""
    sender, watch = sender
    address = f"{HOST}:{free_port_pair()}"
    peer = peers(address)
    sent = send(sender, address)
    assert wait_for(watch, address, sent, 0.5)[0] is None
    stopped = peer.signal(signal.SIGSTOP)
    trouble, _ = wait_for(watch, address, sent, 5)
    took = time.monotonic() - stopped
    assert trouble == f"the connection to {address} broke"
    assert TIMEOUT_S * 0.5 < took < TIMEOUT_S + 1.5, took


def test_unreachable_peer_is_reported_after_the_timeout(sender):
    sender, watch = sender
    holder, port = dead_port()
    try:
        address = f"{HOST}:{port}"
        sent = send(sender, address)
        trouble, took = wait_for(watch, address, sent, 5)
        assert trouble == f"{address} not reachable for {TIMEOUT_S:g} s"
        assert TIMEOUT_S <= took < TIMEOUT_S + 1
    finally:
        holder.close()


def test_restarted_peer_is_trusted_again(sender, peers):
    """What was sent to the old process is lost; what is sent after it came back is not."""
    sender, watch = sender
    address = f"{HOST}:{free_port_pair()}"
    first = peers(address)
    before = send(sender, address)
    assert wait_for(watch, address, before, 0.3)[0] is None
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    assert wait_for(watch, address, before, 5)[0] is not None
    peers(address)
    after = send(sender, address)
    assert wait_for(watch, address, after, TIMEOUT_S * 3)[0] is None
    assert watch.trouble(address, before, time.monotonic()) is not None

