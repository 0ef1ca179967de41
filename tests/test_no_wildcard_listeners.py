"""Every socket a deployment listens on is bound to the configured host, never to all
interfaces: `vllm serve --host 127.0.0.1` with TP=2, and a PD pair with its proxy; and the
rule that picks the address."""
import os
import socket
import subprocess
import sys
from datetime import timedelta

import psutil
import pytest
import requests

from vllm.distributed.network import (HOST_IP_ENV, SERVE_HOST_ENV, internal_host,
                                      serve_tcp_store)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "entrypoints"))
from remote_server import (REPO_ROOT, RemoteServer, free_port_range,  # noqa: E402
                           recorded_pids)

HOST = "127.0.0.1"
ENV = {"VLLM_CPU_KVCACHE_SPACE": "0.25", "OMP_NUM_THREADS": "1"}


def listeners(root_pids: list[int]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening inet socket of the processes and their
    descendants."""
    found = []
    for process in _tree(root_pids):
        try:
            connections = process.net_connections(kind="inet")
            name = f"{process.pid} {' '.join(process.cmdline())[:120]}"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in connections
                  if c.status == psutil.CONN_LISTEN]
    return found


def _tree(root_pids: list[int]) -> list[psutil.Process]:
    processes = {}
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            processes[pid] = root
            processes.update((child.pid, child) for child in root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return list(processes.values())


def assert_bound_to(host: str, found: list[tuple[str, str, int]], at_least: int) -> None:
    stray = [entry for entry in found if entry[1] != host]
    assert not stray, "listening on other addresses than " + host + ":\n" + "\n".join(
        f"  {address}:{port}  ({process})" for process, address, port in stray)
    assert len(found) >= at_least, found


def complete(url: str, model: str) -> None:
    reply = requests.post(url + "/v1/completions", timeout=300,
                          json={"model": model, "prompt": "Who are you?", "max_tokens": 4,
                                "temperature": 0})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("host_ip, configured, serve_host, expected", [
    (None, None, None, "127.0.0.1"),
    (None, None, "10.1.2.3", "10.1.2.3"),
    (None, None, "0.0.0.0", "127.0.0.1"),
    (None, None, "::", "127.0.0.1"),
    (None, None, "localhost", "127.0.0.1"),
    (None, "10.0.0.7", "10.1.2.3", "10.0.0.7"),
    (None, "0.0.0.0", "10.1.2.3", "10.1.2.3"),
    ("10.9.9.9", "10.0.0.7", "10.1.2.3", "10.9.9.9"),
    ("0.0.0.0", None, None, "127.0.0.1"),
    (None, None, "0", "127.0.0.1"),  # resolves to 0.0.0.0
    (None, None, "0::0", "127.0.0.1"),
])
def test_internal_host_rule(monkeypatch, host_ip, configured, serve_host, expected):
    for name, value in ((HOST_IP_ENV, host_ip), (SERVE_HOST_ENV, serve_host)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert internal_host(configured) == expected


@pytest.mark.parametrize("kv_ip", ["0.0.0.0", "::", "0"])
def test_a_wildcard_kv_ip_is_refused(kv_ip):
    from vllm.config import ConfigError
    from vllm.distributed.kv_transfer.config import KVTransferConfig
    with pytest.raises(ConfigError, match="every interface"):
        KVTransferConfig.from_dict({"kv_connector": "PushConnector",
                                    "kv_role": "kv_consumer", "kv_ip": kv_ip})


def test_serve_host_is_for_single_host_deployments_only(monkeypatch):
    monkeypatch.delenv(HOST_IP_ENV, raising=False)
    monkeypatch.setenv(SERVE_HOST_ENV, "127.0.0.1")
    assert internal_host(fallback="10.0.0.5", single_host=False) == "10.0.0.5"


def test_tcp_store_listens_on_its_host_only():
    store = serve_tcp_store(HOST, 0, timedelta(seconds=10))
    mine = [c.laddr for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == store.port]
    assert [address.ip for address in mine] == [HOST]
    with pytest.raises(ValueError, match="all interfaces"):
        serve_tcp_store("0.0.0.0", 0, timedelta(seconds=10))


def _other_local_address():
    """A non-loopback IPv4 address of this machine other than the hostname's, if any: the
    address gloo would not pick by itself."""
    try:
        hostname_address = socket.gethostbyname(socket.gethostname())
    except OSError:
        hostname_address = None
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if (address.family == socket.AF_INET and not address.address.startswith("127.")
                    and address.address != hostname_address):
                return address.address
    return None


def _join_and_report(rank: int, host: str, port: int, queue) -> None:
    import torch.distributed as dist

    from vllm.distributed.init import destroy_worker_distributed, init_worker_distributed
    from vllm.platforms.cpu import CpuPlatform
    init_worker_distributed(rank, 2, host, port, backend="gloo")
    try:
        client = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))
        pair = CpuPlatform().create_pair_group(dist.PrefixStore("pair", client), rank, 2,
                                               timedelta(seconds=60), host=host)
        pair.barrier().wait()
        queue.put(sorted(c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN))
    finally:
        destroy_worker_distributed()


def test_gloo_groups_listen_on_the_rendezvous_host():
    import torch.multiprocessing as mp

    from vllm.distributed.init import start_rendezvous_store
    host = _other_local_address()
    if host is None:
        pytest.skip("no local address besides loopback and the hostname's")
    store = start_rendezvous_store(host)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_join_and_report, args=(host, store.port, queue), nprocs=2,
                       join=True, start_method="spawn")
    # Each rank: its tensor-parallel gloo device and its pair-group device.
    assert [queue.get() for _ in range(2)] == [[host, host]] * 2


@pytest.mark.slow
def test_serve_tensor_parallel_listens_on_its_host_only(demo_model_dir):
    remote = RemoteServer([demo_model_dir, "--tensor-parallel-size", "2", "--max-model-len",
                           "256", "--served-model-name", "demo", "--dtype", "float32",
                           "--uvicorn-log-level", "warning"], env=ENV)
    try:
        server = remote.wait_ready()
        complete(server.url, "demo")
        # The API port, the rendezvous store, the rank channel and each rank's gloo device.
        assert_bound_to(HOST, listeners([server.proc.pid]), at_least=7)
    finally:
        remote.close()


@pytest.mark.slow
def test_pd_pair_and_proxy_listen_on_their_host_only(tmp_path):
    base = free_port_range(40)
    env = {**os.environ, **ENV, "HOST": HOST, "PROXY_PORT": str(base),
           "PREFILL_BASE_PORT": str(base + 1), "DECODE_BASE_PORT": str(base + 2),
           "KV_BASE_PORT": str(base + 10), "MAX_MODEL_LEN": "512",
           "SERVED_MODEL_NAME": "demo", "LOG_DIR": str(tmp_path / "logs"),
           "PID_FILE": str(tmp_path / "pids"), "HEALTH_TIMEOUT": "600"}
    script = os.path.join(REPO_ROOT, "pd_example")
    started = subprocess.run(["bash", f"{script}/disaggregated_prefill.sh"], env=env,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pids = recorded_pids(env["PID_FILE"])
        assert len(pids) == 3  # prefill, decode, proxy
        complete(f"http://{HOST}:{base}", "demo")  # the pair groups form on a transfer
        # HTTP x 3, KV control x 2, the consumer's store, a gloo device per pair member.
        assert_bound_to(HOST, listeners(pids), at_least=8)
    finally:
        stopped = subprocess.run(["bash", f"{script}/kill_server.sh"], env=env, cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
