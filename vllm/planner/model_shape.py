"""The few numbers of a model the planner needs: layers, widths, heads, KV bytes."""
from dataclasses import asdict, dataclass
from typing import Optional

from vllm import kv_shape

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_model_len: int
    dtype_bytes: int = 4
    mla_latent_size: int = 0  # MLA: values cached per token and layer (0: GQA K and V)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token (46,080 for SmolLM2-135M in float32), or an
        MLA model's latents (a copy on every tensor-parallel rank)."""
        per_layer = self.mla_latent_size or 2 * self.num_kv_heads * self.head_dim
        return self.num_layers * per_layer * self.dtype_bytes

    def transfer_copies(self, decode_tp: int) -> int:
        """How often a disaggregated request moves its KV: once, split by head over the
        decode ranks, or (MLA) once to each decode rank (distributed/kv_transfer/plan.py)."""
        return decode_tp if self.mla_latent_size else 1

    @property
    def allreduces_per_step(self) -> int:
        """Attention output and MLP output per layer, plus the vocab-parallel embedding."""
        return 2 * self.num_layers + 1

    def tp_problem(self, tp_size: int) -> Optional[str]:
        """Why the engine would refuse this tensor-parallel size, or None."""
        from vllm.distributed.head_split import check_head_split
        try:
            check_head_split(tp_size, self.num_heads, self.num_kv_heads)
        except ValueError as error:
            return str(error)
        if self.intermediate_size % tp_size:
            return (f"the model's intermediate_size={self.intermediate_size} cannot be split "
                    f"over tensor_parallel_size={tp_size}")
        return None

    def attention_share(self, tp_size: int) -> float:
        """Fraction of the attention work on the busiest rank (heads go out in KV groups,
        so 3 KV heads over 2 ranks leave 2/3 on one of them)."""
        if tp_size <= self.num_kv_heads:
            return -(-self.num_kv_heads // tp_size) / self.num_kv_heads
        replicas = tp_size // self.num_kv_heads
        group = self.num_heads // self.num_kv_heads
        return -(-group // replicas) / self.num_heads

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelShape":
        return cls(**{name: int(data[name]) for name in cls.__dataclass_fields__
                      if name in data})

    @classmethod
    def from_hf_config(cls, hf_config, dtype_bytes: int = 4) -> "ModelShape":
        """num_kv_heads holds the groups heads are split in (an MLA model's every head)."""
        mla = kv_shape.is_mla(hf_config)
        head_dim = (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim if mla
                    else kv_shape.head_size(hf_config))
        return cls(num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
                   num_heads=hf_config.num_attention_heads,
                   num_kv_heads=kv_shape.head_groups(hf_config), head_dim=head_dim,
                   intermediate_size=hf_config.intermediate_size,
                   max_model_len=getattr(hf_config, "max_position_embeddings", 2048),
                   dtype_bytes=dtype_bytes,
                   mla_latent_size=kv_shape.mla_latent_size(hf_config) if mla else 0)


def load_model_shape(model: str, dtype: str = "float32") -> ModelShape:
    """The shape of a model folder or .gguf file (a GGUF is converted once, then cached)."""
    from vllm.transformers_utils.config import get_hf_config
    from vllm.transformers_utils.gguf_cache import resolve_model_source
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPE_BYTES)}")
    return ModelShape.from_hf_config(get_hf_config(resolve_model_source(model)),
                                     DTYPE_BYTES[dtype])
