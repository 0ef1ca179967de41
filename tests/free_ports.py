"""Ports for the servers tests start: below the kernel's ephemeral range (where every outgoing
connection of every process on the machine also takes its local port, so a port found free
by binding port 0 can be taken again before the server binds it), a slice of that low range
per pytest-xdist process, and never the same port twice in one process."""
import os
import random
import socket

LOW, HIGH = 20000, 32000  # below Linux's default ip_local_port_range (32768-60999)
_given: set[int] = set()


def _worker_slice() -> range:
    """This test process's share of [LOW, HIGH): gw0, gw1, ... of PYTEST_XDIST_WORKER_COUNT."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    width = (HIGH - LOW) // max(count, 1)
    return range(LOW + index * width, LOW + (index + 1) * width)


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
            return True
        except OSError:
            return False


def free_port_range(span: int, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p + span - 1 are free now and not handed out before."""
    ports = _worker_slice()
    for _ in range(1000):
        base = random.randrange(ports.start, ports.stop - span)
        block = range(base, base + span)
        if not _given.intersection(block) and all(is_free(p, host) for p in block):
            _given.update(block)
            return base
    raise RuntimeError(f"no {span} consecutive free ports in {ports}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_port_range(1, host)
