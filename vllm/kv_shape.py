"""A Hugging Face config's KV cache per layer (torch-free): GQA's K and V heads, or the latent
row per token of multi-head latent attention (MLA: DeepSeek V2/V3)."""
from typing import Any, NamedTuple

MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
MLA_FIELDS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
PER_HEAD, LATENT = "per_head", "latent"  # the kinds of cache


class CacheUnits(NamedTuple):
    """One layer's cache per token in the units tensor-parallel ranks hold and the KV
    transfer moves whole: `planes` tensors of `count` units of `size` values each.

    per_head (GQA): keys and values (2 planes) of each KV head, dealt out to ranks by head.
    latent (MLA): one plane of one unit, the latent, held whole by every rank."""
    kind: str
    count: int
    size: int

    @property
    def planes(self) -> int:
        return 2 if self.kind == PER_HEAD else 1

    @property
    def replicated(self) -> bool:
        """Every rank holds every unit, whatever the tensor-parallel size."""
        return self.kind == LATENT

    @property
    def elements_per_token(self) -> int:
        return self.planes * self.count * self.size


def is_mla(hf_config: Any) -> bool:
    """MLA caches one latent row per token and layer (kv_lora_rank + qk_rope_head_dim values,
    the same on every tensor-parallel rank) instead of per-head keys and values."""
    return (getattr(hf_config, "model_type", None) in MLA_MODEL_TYPES
            or getattr(hf_config, "kv_lora_rank", None) is not None)


def check_mla_fields(hf_config: Any) -> None:
    """Raises ValueError naming the first MLA field that is missing or not a positive int."""
    for name in MLA_FIELDS:
        _check_positive(name, getattr(hf_config, name, None))
    q_lora_rank = getattr(hf_config, "q_lora_rank", None)
    if q_lora_rank is not None:
        _check_positive("q_lora_rank", q_lora_rank)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"the MLA model config needs a positive integer {name}, got {value!r}")


def mla_latent_size(hf_config: Any) -> int:
    """Values per token in one layer's MLA cache: the normalised latent, then the rotated
    shared key part (576 for DeepSeek-R1)."""
    check_mla_fields(hf_config)
    return hf_config.kv_lora_rank + hf_config.qk_rope_head_dim


def num_kv_heads(hf_config: Any) -> int:
    """KV heads of the whole model (before any tensor-parallel split); GQA only."""
    _refuse_mla(hf_config, "KV heads")
    return getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads


def head_size(hf_config: Any) -> int:
    _refuse_mla(hf_config, "a KV head size")
    return getattr(hf_config, "head_dim", None) or \
        hf_config.hidden_size // hf_config.num_attention_heads


def _refuse_mla(hf_config: Any, what: str) -> None:
    if is_mla(hf_config):
        raise ValueError(f"an MLA model ({getattr(hf_config, 'model_type', '?')}) caches a "
                         f"latent per token, not {what}: ask kv_shape.cache_elements_per_token")


def head_groups(hf_config: Any) -> int:
    """The groups attention heads are dealt out to tensor-parallel ranks in: the KV heads
    (GQA), or every query head (MLA, whose latent cache is replicated on every rank)."""
    if is_mla(hf_config):
        return hf_config.num_attention_heads
    return num_kv_heads(hf_config)


def cache_units(hf_config: Any) -> CacheUnits:
    """The kind of cache this model keeps: GQA's KV heads, or the MLA latent."""
    if is_mla(hf_config):
        return CacheUnits(LATENT, 1, mla_latent_size(hf_config))
    return CacheUnits(PER_HEAD, num_kv_heads(hf_config), head_size(hf_config))


def cache_elements_per_token(hf_config: Any) -> int:
    """One layer's cache values per token, all ranks together: 2 * KV heads * head size
    (GQA, split by head over ranks), or the MLA latent (the same on every rank)."""
    return cache_units(hf_config).elements_per_token


def expanded_elements_per_token(hf_config: Any) -> int:
    """One MLA layer's keys and values per token as plain multi-head attention would cache
    them: every head's key (no-rope and rope parts) and value."""
    check_mla_fields(hf_config)
    key = hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim
    return hf_config.num_attention_heads * (key + hf_config.v_head_dim)
