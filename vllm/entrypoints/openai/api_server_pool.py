"""`vllm serve --api-server-count N`: N API-server processes accepting on the one bound
socket, each a front end of every engine core. This process starts and watches the
engine cores (and listens for headless nodes); /metrics sums the servers' counters with
prometheus-client's multiprocess mode, in a temporary folder removed at exit."""
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Optional

from vllm.distributed.network import bound_socket, zmq_address
from vllm.engine.core_launcher import LocalEngineCores, RankAddresses
from vllm.engine.dp_handshake import HeadListener, RankEndpoint
from vllm.entrypoints.openai.metrics import MULTIPROC_DIR_ENV
from vllm.logger import init_logger

logger = init_logger(__name__)

STOP_GRACE_S = 30.0


def plan_rank_addresses(parallel, num_servers: int, ipc_dir: str) -> dict[int, RankAddresses]:
    """Every rank's (input, output) address per API server: IPC for this host's engine
    cores, free TCP ports of the data-parallel address for headless nodes' ones."""
    plan = {}
    for rank in range(parallel.data_parallel_size):
        if rank in parallel.local_dp_ranks:
            inputs = [f"ipc://{ipc_dir}/dp{rank}-s{i}-in" for i in range(num_servers)]
            outputs = [f"ipc://{ipc_dir}/dp{rank}-s{i}-out" for i in range(num_servers)]
        else:
            host = parallel.data_parallel_address
            inputs = [zmq_address(host, _free_port(host)) for _ in range(num_servers)]
            outputs = [zmq_address(host, _free_port(host)) for _ in range(num_servers)]
        plan[rank] = RankAddresses(rank, inputs, outputs)
    return plan


def _free_port(host: str) -> int:
    with bound_socket(host) as probe:
        return probe.getsockname()[1]


def run_api_servers(args, vllm_config, sock: socket.socket) -> int:
    """Until SIGINT / SIGTERM or an API server exits (its exit code)."""
    parallel = vllm_config.parallel_config
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with tempfile.TemporaryDirectory(prefix="vllm-metrics-") as metrics_dir, \
            tempfile.TemporaryDirectory(prefix="vllm-engines-") as ipc_dir:
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir  # for the API servers spawned below
        plan = plan_rank_addresses(parallel, args.api_server_count, ipc_dir)
        cores = LocalEngineCores(vllm_config)
        listener: Optional[HeadListener] = None
        servers: list[multiprocessing.Process] = []
        try:
            cores.start([plan[rank] for rank in parallel.local_dp_ranks])
            threading.Thread(target=cores.watch, name="vllm-engine-monitor",
                             daemon=True).start()
            if parallel.remote_dp_ranks:
                listener = HeadListener(vllm_config, {
                    rank: RankEndpoint(rank, plan[rank].input_addresses,
                                       plan[rank].output_addresses)
                    for rank in parallel.remote_dp_ranks})
                listener.start()
            servers = _start_servers(args, vllm_config, sock, plan)
            return _wait_for_first_exit(servers)
        except KeyboardInterrupt:
            logger.info("server stopped")
            return 0
        finally:
            _stop_servers(servers)
            if listener is not None:
                listener.close()
            cores.stop()
            os.environ.pop(MULTIPROC_DIR_ENV, None)


def _start_servers(args, vllm_config, sock, plan) -> list[multiprocessing.Process]:
    spawn = multiprocessing.get_context("spawn")
    servers = []
    for index in range(args.api_server_count):
        server = spawn.Process(target=run_api_server_process, name=f"VllmApiServer{index}",
                               args=(args, vllm_config, sock, index, plan))
        server.start()
        logger.info("API server %d started (pid %d)", index, server.pid)
        servers.append(server)
    return servers


def _wait_for_first_exit(servers: list[multiprocessing.Process]) -> int:
    sentinels = {server.sentinel: server for server in servers}
    first = sentinels[multiprocessing.connection.wait(list(sentinels))[0]]
    first.join(1.0)
    if first.exitcode != 0:
        logger.error("API server %s exited with code %s; stopping the others", first.name,
                     first.exitcode)
    return first.exitcode or 0


def _stop_servers(servers: list[multiprocessing.Process]) -> None:
    for server in servers:
        if server.is_alive():
            server.terminate()  # SIGTERM: each drains, then stops
    for server in servers:
        server.join(STOP_GRACE_S)
        if server.is_alive():
            server.kill()
            server.join(5)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt()


def run_api_server_process(args, vllm_config, sock: socket.socket, index: int,
                           plan: dict[int, RankAddresses]) -> None:
    """Entry point of API server `index`: its own front end of every engine core."""
    from vllm.engine.core_client import EngineStartError
    from vllm.engine.dp_client import make_engine_client
    from vllm.entrypoints.openai.api_server import run_server
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    client = make_engine_client(vllm_config, client_index=index, attach=plan)
    try:
        asyncio.run(run_server(args, vllm_config, sock, client, index))
    except KeyboardInterrupt:
        pass
    except EngineStartError as error:
        print(f"vllm serve: error: {error}", file=sys.stderr)
        sys.exit(2 if error.is_config_error else 1)
