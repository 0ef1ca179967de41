"""Which executor runs the workers, from the parallel config."""
from vllm.config import ParallelConfig

BACKENDS = ("uni", "mp", "ray")


def resolve_backend(parallel_config: ParallelConfig) -> str:
    """'uni' for one rank, 'mp' for several, unless a backend is named."""
    backend = parallel_config.distributed_executor_backend
    tp_size = parallel_config.tensor_parallel_size
    if backend is None:
        return "uni" if tp_size == 1 else "mp"
    if backend not in BACKENDS:
        raise ValueError(f"distributed_executor_backend must be one of {', '.join(BACKENDS)}, "
                         f"got {backend!r}")
    if backend == "uni" and tp_size != 1:
        raise ValueError(f"distributed_executor_backend 'uni' runs one rank, but "
                         f"tensor_parallel_size={tp_size}: use 'mp' or 'ray'")
    return backend


def executor_class(parallel_config: ParallelConfig) -> type:
    backend = resolve_backend(parallel_config)
    if backend == "mp":
        from vllm.executor.multiproc import MultiprocExecutor
        return MultiprocExecutor
    if backend == "ray":
        from vllm.executor.ray_executor import RayExecutor
        return RayExecutor
    from vllm.executor.uniproc import UniProcExecutor
    return UniProcExecutor
