"""Engine arguments named as vLLM's, and their resolution into a VllmConfig."""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm.batch_invariant import batch_invariant_requested
from vllm.distributed.network import (DEFAULT_DP_RPC_PORT, LOOPBACK, is_wildcard,
                                      numeric_address)
from vllm.config import (CacheConfig, ConfigError, ModelConfig, ParallelConfig,
                         SchedulerConfig, VllmConfig, resolve_dtype)

# Token budget of one step when unset: offline runs favour throughput (bigger prefill
# chunks), servers favour inter-token latency (vLLM sets them by usage context too).
DEFAULT_MAX_NUM_BATCHED_TOKENS = {"llm_class": 8192, "engine": 2048}
DEFAULT_MAX_NUM_SEQS = 256


@dataclass
class EngineArgs:
    model: Optional[str] = None
    tokenizer: Optional[str] = None
    served_model_name: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    quantization: Optional[str] = None  # "ascend", or None: detected from the model folder
    seed: int = 0
    max_model_len: Optional[int] = None
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: Optional[int] = None
    block_size: Optional[int] = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: Optional[float] = None
    num_gpu_blocks_override: Optional[int] = None
    tensor_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None
    data_parallel_size: int = 1
    data_parallel_size_local: Optional[int] = None  # default: every rank from the start
    data_parallel_start_rank: int = 0
    data_parallel_address: str = LOOPBACK
    data_parallel_rpc_port: int = DEFAULT_DP_RPC_PORT
    enforce_eager: bool = False
    generation_config: str = "auto"  # auto | vllm | a folder with generation_config.json
    kv_transfer_config: Optional[Any] = None
    kv_events_config: Optional[Any] = None  # a dict of vLLM's KVEventsConfig fields
    additional_config: dict = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def create_engine_config(self, usage_context: str = "engine") -> VllmConfig:
        from vllm.platforms import current_platform
        from vllm.transformers_utils.config import get_hf_config
        self._validate_scalars()
        from vllm.distributed.kv_events.config import resolve_kv_events_config
        kv_events_config = resolve_kv_events_config(self.kv_events_config)
        from vllm.transformers_utils.gguf_cache import resolve_model_source
        model = self.model or _demo_model()
        source = resolve_model_source(model)
        tokenizer = resolve_model_source(self.tokenizer) if self.tokenizer else source
        hf_config = get_hf_config(source, trust_remote_code=self.trust_remote_code)
        _check_architecture(hf_config)
        _check_mla(hf_config, self.kv_transfer_config)
        _check_tensor_parallel_split(hf_config, self.tensor_parallel_size)
        max_model_len = _resolve_max_model_len(hf_config, self.max_model_len)
        batch_invariant = batch_invariant_requested()
        dtype = resolve_dtype(self.dtype, current_platform.default_dtype(batch_invariant))
        generation = _generation_defaults(self.generation_config, source, tokenizer,
                                          hf_config, self.trust_remote_code)
        if batch_invariant:
            current_platform.batch_invariant_linear(dtype)  # ConfigError where unsupported
        from vllm.model_executor.layers.quantization.ascend_config import resolve_quantization
        quantization = resolve_quantization(self.quantization, source)
        model_config = ModelConfig(
            model=source, tokenizer=tokenizer, hf_config=hf_config, dtype=dtype,
            max_model_len=max_model_len, seed=self.seed,
            served_model_name=self.served_model_name or model,
            trust_remote_code=self.trust_remote_code, enforce_eager=self.enforce_eager,
            batch_invariant=batch_invariant, quantization=quantization,
            eos_token_ids=generation.eos_token_ids,
            sampling_defaults=generation.sampling, default_max_tokens=generation.max_tokens)
        block_size = self.block_size or current_platform.default_block_size
        current_platform.check_block_size(block_size)
        cache_config = CacheConfig(block_size, self.enable_prefix_caching,
                                   self.gpu_memory_utilization, self.num_gpu_blocks_override)
        batched = (self.max_num_batched_tokens or
                   DEFAULT_MAX_NUM_BATCHED_TOKENS.get(usage_context, 2048))
        if not self.enable_chunked_prefill:
            batched = max(batched, max_model_len)
        scheduler_config = SchedulerConfig(self.max_num_seqs, batched, max_model_len,
                                           self.enable_chunked_prefill)
        parallel_config = ParallelConfig(
            self.tensor_parallel_size, self.distributed_executor_backend,
            data_parallel_size=self.data_parallel_size,
            data_parallel_size_local=self._data_parallel_size_local(),
            data_parallel_start_rank=self.data_parallel_start_rank,
            data_parallel_address=numeric_address(self.data_parallel_address),
            data_parallel_rpc_port=self.data_parallel_rpc_port)
        return VllmConfig(model_config, cache_config, scheduler_config, parallel_config,
                          _kv_transfer_config(self.kv_transfer_config),
                          dict(self.additional_config or {}), kv_events_config)

    def _validate_scalars(self) -> None:
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens, optional=True)
        _positive("max_model_len", self.max_model_len, optional=True)
        _positive("num_gpu_blocks_override", self.num_gpu_blocks_override, optional=True)
        if self.block_size is not None and (self.block_size < 1 or
                                            self.block_size & (self.block_size - 1)):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        util = self.gpu_memory_utilization
        if util is not None and not 0 < util <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {util}")
        _positive("tensor_parallel_size", self.tensor_parallel_size)
        if self.distributed_executor_backend not in (None, "mp", "ray", "uni"):
            raise ConfigError("distributed_executor_backend must be 'mp', 'ray' or 'uni', "
                              f"got {self.distributed_executor_backend!r}")
        if self.distributed_executor_backend == "uni" and self.tensor_parallel_size != 1:
            raise ConfigError(f"distributed_executor_backend 'uni' runs one rank, but "
                              f"tensor_parallel_size={self.tensor_parallel_size}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self._validate_data_parallel()

    def _data_parallel_size_local(self) -> int:
        if self.data_parallel_size_local is not None:
            return self.data_parallel_size_local
        return self.data_parallel_size - self.data_parallel_start_rank

    def _validate_data_parallel(self) -> None:
        size, start = self.data_parallel_size, self.data_parallel_start_rank
        _positive("data_parallel_size", size)
        _positive("data_parallel_size_local", self.data_parallel_size_local, optional=True)
        if not isinstance(start, int) or not 0 <= start < size:
            raise ConfigError(f"data_parallel_start_rank={start!r} is not a rank of "
                              f"data_parallel_size={size}")
        local = self._data_parallel_size_local()
        if start + local > size:
            raise ConfigError(f"data_parallel_start_rank={start} + data_parallel_size_local="
                              f"{local} runs past data_parallel_size={size}")
        if not 1 <= self.data_parallel_rpc_port <= 65535:
            raise ConfigError(f"data_parallel_rpc_port={self.data_parallel_rpc_port} is not "
                              "a port number")
        if local < size:
            refuse_wildcard_as_config_error("data_parallel_address", self.data_parallel_address)


def refuse_wildcard_as_config_error(name: str, host: str) -> None:
    if is_wildcard(host):
        raise ConfigError(f"{name}={host!r} is every interface: give the head's own address")


def _positive(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_architecture(hf_config) -> None:
    """The architecture is registered and its class can serve this config."""
    from vllm.model_executor.models.registry import resolve_model_cls
    model_cls = resolve_model_cls(getattr(hf_config, "architectures", None) or [])
    check_config = getattr(model_cls, "check_config", None)
    if check_config is not None:
        try:
            check_config(hf_config)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _check_mla(hf_config, kv_transfer_config) -> None:
    """An MLA model needs the platform's backend to have an MLA implementation, and for
    KV transfer a backend whose latent copies are known to serve its cache."""
    from vllm import kv_shape
    from vllm.platforms import current_platform
    if not kv_shape.is_mla(hf_config):
        return
    backend = current_platform.get_attn_backend_cls()
    if backend.mla_impl_cls is None:
        raise ConfigError(f"the {backend.name} attention backend of platform "
                          f"{current_platform.name} has no MLA implementation (issue 17)")
    if kv_transfer_config is not None and not backend.latent_transfer:
        raise ConfigError(f"kv_transfer_config: the {backend.name} attention backend cannot "
                          "transfer an MLA latent cache yet (issue 17)")


def _check_tensor_parallel_split(hf_config, tp_size: int) -> None:
    """Heads are dealt out in groups (see head_split, kv_shape.head_groups); MLP rows, the
    experts' included, split evenly."""
    from vllm.distributed.head_split import check_head_split
    from vllm.kv_shape import head_groups
    heads = getattr(hf_config, "num_attention_heads", None)
    if heads is not None:
        try:
            check_head_split(tp_size, heads, head_groups(hf_config))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    for name in ("intermediate_size", "moe_intermediate_size"):
        rows = getattr(hf_config, name, None)
        if rows is not None and rows % tp_size:
            raise ConfigError(f"the model's {name}={rows} cannot be split over "
                              f"tensor_parallel_size={tp_size}")


def _resolve_max_model_len(hf_config, requested: Optional[int]) -> int:
    derived = getattr(hf_config, "max_position_embeddings", None)
    if requested is None:
        if derived is None:
            raise ConfigError("the model config has no max_position_embeddings: "
                              "set max_model_len")
        return derived
    if derived is not None and requested > derived:
        raise ConfigError(f"max_model_len={requested} is larger than the model's "
                          f"max_position_embeddings={derived}")
    return requested


def _generation_defaults(setting: str, source: str, tokenizer: str, hf_config,
                         trust_remote_code: bool):
    """Eos ids and sampling defaults; with no eos id in either config, the tokenizer's."""
    from vllm.transformers_utils.generation_config import (generation_defaults,
                                                           read_generation_config)
    folder = source if os.path.isdir(source) else os.path.dirname(source)
    generation = generation_defaults(read_generation_config(setting, folder),
                                     getattr(hf_config, "eos_token_id", None))
    if generation.eos_token_ids:
        return generation
    from vllm.transformers_utils.tokenizer import get_tokenizer
    try:
        eos = get_tokenizer(tokenizer, trust_remote_code=trust_remote_code).eos_token_id
    except (OSError, ValueError):  # no tokenizer here: the engine core runs without one
        eos = None
    return dataclasses.replace(generation, eos_token_ids=() if eos is None else (eos,))


def _demo_model() -> str:
    from vllm.demo_model import demo_model_path
    return demo_model_path()


def _kv_transfer_config(value):
    """A dict (as --kv-transfer-config gives) becomes a validated KVTransferConfig whose
    connector class is importable."""
    from vllm.distributed.kv_transfer.config import KVTransferConfig
    from vllm.distributed.kv_transfer.factory import get_connector_class
    if value is None:
        return None
    config = value if isinstance(value, KVTransferConfig) else KVTransferConfig.from_dict(
        dict(value))
    get_connector_class(config)
    return config
