"""Engine configuration, resolved and validated once at start-up."""
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from vllm import kv_shape
from vllm.distributed.network import DEFAULT_DP_RPC_PORT, LOOPBACK

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ConfigError(ValueError):
    """A user-facing configuration problem; its message names the offending value."""


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """The JSON object in the file at path; ConfigError (naming `what` and the path) if the
    file cannot be read, is not JSON, or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what}: cannot read {path}: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: {path} must hold a JSON object")
    return value


def resolve_dtype(dtype: str | torch.dtype, platform_default: torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return platform_default
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


@dataclass
class ModelConfig:
    model: str
    tokenizer: str
    hf_config: Any
    dtype: torch.dtype
    max_model_len: int
    seed: int = 0
    served_model_name: str = ""
    trust_remote_code: bool = False
    enforce_eager: bool = False  # never record decode steps into graphs
    batch_invariant: bool = False  # VLLM_BATCH_INVARIANT (vllm/batch_invariant.py)
    quantization: Optional[str] = None  # "ascend": W8A8 weights (layers/quantization/)
    # From config.json and generation_config.json (--generation-config):
    eos_token_ids: tuple[int, ...] = ()  # each one ends a request (unless ignore_eos)
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # for unset fields
    default_max_tokens: Optional[int] = None  # max_new_tokens, for requests without one

    @property
    def num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    @property
    def is_mla(self) -> bool:
        return kv_shape.is_mla(self.hf_config)

    @property
    def kv_cache_elements_per_token(self) -> int:
        """Cache values per token of one layer, all ranks together (vllm/kv_shape.py)."""
        return kv_shape.cache_elements_per_token(self.hf_config)

    @property
    def cache_units(self) -> kv_shape.CacheUnits:
        """The kind of KV cache (GQA heads or the MLA latent) and its units."""
        return kv_shape.cache_units(self.hf_config)

    @property
    def num_kv_heads(self) -> int:
        return kv_shape.num_kv_heads(self.hf_config)

    @property
    def head_size(self) -> int:
        return kv_shape.head_size(self.hf_config)

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size


@dataclass
class CacheConfig:
    block_size: int
    enable_prefix_caching: bool = True
    gpu_memory_utilization: Optional[float] = None
    num_gpu_blocks_override: Optional[int] = None
    num_blocks: int = 0  # filled in once the memory budget is known


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None
    # Data parallel (vLLM's names): data_parallel_size engine cores, each with its own
    # tensor-parallel group and KV cache; this process hosts ranks [start_rank, start_rank
    # + size_local). The head (start_rank 0) listens for headless ones on address:rpc_port.
    data_parallel_size: int = 1
    data_parallel_size_local: int = 1
    data_parallel_start_rank: int = 0
    data_parallel_address: str = LOOPBACK
    data_parallel_rpc_port: int = DEFAULT_DP_RPC_PORT
    data_parallel_rank: int = 0  # the rank of the engine core holding this config
    data_parallel_rank_local: int = 0  # its index among this host's engine cores

    @property
    def local_dp_ranks(self) -> range:
        return range(self.data_parallel_start_rank,
                     self.data_parallel_start_rank + self.data_parallel_size_local)

    @property
    def remote_dp_ranks(self) -> list[int]:
        """The ranks a head waits for headless nodes to bring."""
        return [r for r in range(self.data_parallel_size) if r not in self.local_dp_ranks]


@dataclass
class VllmConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    kv_transfer_config: Optional[Any] = None
    additional_config: dict = field(default_factory=dict)
    kv_events_config: Optional[Any] = None  # vllm/distributed/kv_events/config.py
