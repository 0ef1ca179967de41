"""Tensor-parallel ranks as Ray actors; steps still travel over the ZMQ channel.

Connects to the cluster in RAY_ADDRESS (address="auto") when it is set, else starts
a local one, unless this process already called ray.init().
"""
import os
from typing import Optional

import vllm
from vllm.config import VllmConfig
from vllm.distributed.network import internal_host
from vllm.executor.distributed_executor import DistributedExecutor
from vllm.executor.rank_launcher import RankLauncher
from vllm.executor.worker_proc import RankSpec, run_rank
from vllm.logger import init_logger

logger = init_logger(__name__)

PLACEMENT_TIMEOUT_S = 300.0
CPUS_PER_RANK_ENV = "VLLM_RAY_CPUS_PER_RANK"


class RayExecutor(DistributedExecutor):

    def make_launcher(self) -> RankLauncher:
        return RayLauncher()


class RankActor:
    """The body of one rank's Ray actor."""

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def run(self, vllm_config: VllmConfig, spec: RankSpec) -> None:
        run_rank(vllm_config, spec)


class RayLauncher(RankLauncher):

    def __init__(self):
        self.ray = import_ray()
        connect_to_ray(self.ray)
        self.actors: list = []
        self.run_refs: list = []

    def host_address(self) -> str:
        alive_nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        if len(alive_nodes) <= 1:
            return internal_host()
        return internal_host(fallback=self.ray.util.get_node_ip_address(), single_host=False)

    def launch(self, vllm_config: VllmConfig, template: RankSpec) -> None:
        ray = self.ray
        actor_cls = ray.remote(num_cpus=cpus_per_rank(), max_restarts=0,
                               runtime_env=package_runtime_env())(RankActor)
        self.actors = [actor_cls.remote() for _ in range(template.world_size)]
        try:
            node_ids = ray.get([actor.node_id.remote() for actor in self.actors],
                               timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"Ray could not place {template.world_size} rank actors in "
                               f"{PLACEMENT_TIMEOUT_S:.0f} s: does the cluster have room "
                               f"for them ({CPUS_PER_RANK_ENV})?") from None
        for rank, (actor, local_rank, local_size) in enumerate(
                zip(self.actors, *local_ranks(node_ids))):
            spec = template._replace(rank=rank, local_rank=local_rank,
                                     local_world_size=local_size)
            self.run_refs.append(actor.run.remote(vllm_config, spec))

    def wait_for_exit(self, timeout_s: float) -> Optional[str]:
        if not self.ray.is_initialized():  # never let ray.wait start a new cluster
            return "Ray was shut down under the ranks"
        if not self.run_refs:
            return None
        ready, _ = self.ray.wait(self.run_refs, num_returns=1, timeout=timeout_s)
        if not ready:
            return None
        rank = self.run_refs.index(ready[0])
        try:
            self.ray.get(ready[0])
        except Exception as error:
            return f"rank {rank}'s Ray actor failed: {type(error).__name__}: {error}"
        return f"rank {rank}'s Ray actor stopped"

    def stop(self, grace_s: float) -> None:
        if not self.ray.is_initialized():
            return  # Ray shut down first (interpreter exit): its actors went with it
        if self.run_refs:
            self.ray.wait(self.run_refs, num_returns=len(self.run_refs), timeout=grace_s)
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors, self.run_refs = [], []


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("distributed_executor_backend='ray' needs Ray: "
                          "pip install ray") from None
    return ray


def connect_to_ray(ray) -> None:
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")
    else:  # a local cluster: its ports on our host, no dashboard
        ray.init(_node_ip_address=internal_host(), include_dashboard=False)
    logger.info("connected to Ray: %s", ray.cluster_resources())


def package_runtime_env() -> dict:
    """Lets actors import this package from the folder it was imported from here."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(vllm.__file__)))
    paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def cpus_per_rank() -> float:
    text = os.environ.get(CPUS_PER_RANK_ENV, "0")
    try:
        cpus = float(text)
    except ValueError:
        raise ValueError(f"{CPUS_PER_RANK_ENV} must be a number, got {text!r}") from None
    if cpus < 0:
        raise ValueError(f"{CPUS_PER_RANK_ENV} must be >= 0, got {text!r}")
    return cpus


def local_ranks(node_ids: list[str]) -> tuple[list[int], list[int]]:
    """Each rank's index among the ranks on its node, and how many ranks share the node."""
    seen: dict[str, int] = {}
    indices = []
    for node in node_ids:
        indices.append(seen.get(node, 0))
        seen[node] = indices[-1] + 1
    return indices, [seen[node] for node in node_ids]
