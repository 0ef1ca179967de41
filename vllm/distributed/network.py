"""The one rule for which address internal sockets bind to, and servers bound by it."""
import contextlib
import ipaddress
import os
import socket
from datetime import timedelta
from typing import Optional

HOST_IP_ENV = "VLLM_HOST_IP"
SERVE_HOST_ENV = "VLLM_SERVE_HOST"  # `vllm serve --host`, for the processes it spawns
LOOPBACK = "127.0.0.1"
DEFAULT_DP_RPC_PORT = 29550  # vLLM's default --data-parallel-rpc-port (the head listens)
WILDCARDS = ("", "0.0.0.0", "::", "*")


def internal_host(configured: Optional[str] = None, fallback: str = LOOPBACK,
                  single_host: bool = True) -> str:
    """The address an internal socket (tensor-parallel rendezvous and rank channel, gloo,
    KV transfer) binds to and tells its peers: VLLM_HOST_IP if set, else `configured`
    (kv_ip for the KV-transfer sockets), else `vllm serve --host` when every process runs
    on this host, else `fallback`. Wildcards are skipped, so nothing listens on all
    interfaces."""
    candidates = [os.environ.get(HOST_IP_ENV), configured]
    if single_host:
        candidates.append(os.environ.get(SERVE_HOST_ENV))
    for host in candidates:
        if not resolves_to_wildcard(host):
            return numeric_address(host.strip().strip("[]"))
    return fallback


def numeric_address(host: str) -> str:
    """`host` as an IP address (a name resolves to its first IPv4 address, else IPv6)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    try:
        found = [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        return host  # binding it reports the problem
    return next((address for address in found if ":" not in address), found[0])


def is_wildcard(host: Optional[str]) -> bool:
    if host is None or host.strip().strip("[]") in WILDCARDS:
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    return False


def resolves_to_wildcard(host: Optional[str]) -> bool:
    """A wildcard, or a name for one ("0" resolves to 0.0.0.0)."""
    return is_wildcard(host) or is_wildcard(numeric_address(host.strip().strip("[]")))


def refuse_wildcard(host: str) -> None:
    """ValueError when `host` would listen on every interface."""
    if is_wildcard(host):
        raise ValueError(f"internal sockets never listen on all interfaces ({host!r}); "
                         f"give an address (see {HOST_IP_ENV})")


def remember_serve_host(host: str) -> None:
    """Make `vllm serve --host` the default of internal_host in this process's children."""
    os.environ[SERVE_HOST_ENV] = host


def bound_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port), not yet listening."""
    refuse_wildcard(host)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot bind {host}:{port}: {error.strerror}") from None
    return sock


def serve_tcp_store(host: str, port: int, timeout: timedelta):
    """A master torch TCPStore listening on host:port only (0: a free port, see `.port`);
    left to itself, torch's store listens on every interface."""
    import torch.distributed as dist
    sock = bound_socket(host, port)
    try:
        store = dist.TCPStore(host, sock.getsockname()[1], None, is_master=True,
                              timeout=timeout, wait_for_workers=False,
                              master_listen_fd=sock.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    sock.detach()  # the store owns the descriptor now and closes it when it goes
    return store


def is_local_address(host: str) -> bool:
    """Whether this machine holds `host` (a socket can bind to it)."""
    try:
        bound_socket(host).close()
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def interface_of(host: str) -> Optional[str]:
    """The name of the network interface holding address `host`, if one does."""
    import psutil
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address.split("%")[0] == host for address in addresses):
            return name
    return None


def zmq_address(host: str, port: Optional[int] = None) -> str:
    """tcp://host[:port], an IPv6 host in brackets."""
    address = f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
    return address if port is None else f"{address}:{port}"
