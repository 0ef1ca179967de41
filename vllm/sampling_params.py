"""Per-request sampling parameters, with vLLM's field names and defaults."""

import copy
import dataclasses
import enum
import inspect
import math
import numbers
from typing import Any

_GREEDY_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20
_MAX_PENALTY = 2.0
_MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_STOP_ENTRIES = 1024  # stop strings, stop_token_ids: each is checked every step
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty",
                 "frequency_penalty", "repetition_penalty")
_OPTIONAL_INT_FIELDS = ("n", "best_of", "top_k", "seed", "max_tokens", "min_tokens", "logprobs")


class SamplingType(enum.IntEnum):
    """How a request picks its next token."""

    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _require_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def _require_number(name: str, value: Any) -> float:
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_real or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _require_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}.")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


def _token_id(name: str, value: Any) -> int:
    token_id = _require_int(name, value)
    if token_id < 0:
        raise ValueError(f"{name} must be non-negative, got {token_id}.")
    return token_id


def _bias_token_id(key: Any) -> int:
    if isinstance(key, str) and key.lstrip("-").isdigit():
        key = int(key)  # JSON object keys arrive as strings
    return _token_id("logit_bias token id", key)


@dataclasses.dataclass(init=False)
class SamplingParams:
    """Sampling parameters of one request, validated on construction.

    Build it with keyword arguments; every invalid value raises ValueError
    naming the value. ``max_tokens=None`` means "up to max_model_len" (the
    engine fills it in). ``top_k=-1`` disables top-k.
    """

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    extra_args: dict[str, Any] | None = None

    def __init__(self, **kwargs: Any) -> None:
        names = [field.name for field in dataclasses.fields(self)]
        unknown = [key for key in kwargs if key not in names]
        if unknown:
            raise ValueError(f"unknown sampling parameter {unknown[0]!r}")
        for field in dataclasses.fields(self):
            setattr(self, field.name, kwargs.get(field.name, field.default))
        self._verify()
        self._normalize()

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "SamplingParams":
        """Build from keyword arguments, dropping those whose value is None.

        A dropped ``max_tokens`` gets the default (16); pass
        ``max_tokens=None`` to the constructor for "up to max_model_len".
        """
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def sampling_type(self) -> SamplingType:
        """GREEDY below a tiny temperature, RANDOM_SEED with a seed, else RANDOM."""
        if self.temperature < _GREEDY_TEMPERATURE:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def all_stop_token_ids(self) -> set[int]:
        """Token ids that end the request besides the model's eos token."""
        return set(self.stop_token_ids)

    @property
    def output_text_buffer_length(self) -> int:
        """Characters to hold back from streaming so a stop string never leaks."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(stop) for stop in self.stop) - 1

    def clone(self) -> "SamplingParams":
        """Return a deep copy."""
        return copy.deepcopy(self)

    def _verify(self) -> None:
        self._verify_lengths()
        self._verify_sampling()
        self._verify_penalties()
        self._verify_stops()
        self._verify_outputs()

    def _verify_lengths(self) -> None:
        if _require_int("n", self.n) < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError(
                f"best_of must be None or equal to n ({self.n}), got {self.best_of!r}."
            )
        if self.max_tokens is not None and _require_int("max_tokens", self.max_tokens) < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if _require_int("min_tokens", self.min_tokens) < 0:
            raise ValueError(f"min_tokens must be non-negative, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )

    def _verify_sampling(self) -> None:
        if _require_number("temperature", self.temperature) < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0 < _require_number("top_p", self.top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        top_k = _require_int("top_k", self.top_k)
        if top_k == 0 or top_k < -1:
            raise ValueError(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
        if not 0 <= _require_number("min_p", self.min_p) <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.seed is not None and not INT64_MIN <= _require_int("seed", self.seed) <= INT64_MAX:
            raise ValueError(f"seed must fit in a signed 64-bit integer, got {self.seed}.")

    def _verify_penalties(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = _require_number(name, getattr(self, name))
            if not -_MAX_PENALTY <= value <= _MAX_PENALTY:
                raise ValueError(f"{name} must be in [-2, 2], got {value}.")
        if _require_number("repetition_penalty", self.repetition_penalty) <= 0:
            raise ValueError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )

    def _verify_stops(self) -> None:
        for name in ("stop", "stop_token_ids"):
            count = len(_as_list(getattr(self, name)))
            if count > MAX_STOP_ENTRIES:
                raise ValueError(f"{name} may hold at most {MAX_STOP_ENTRIES} entries, got "
                                 f"{count}.")
        for name in ("ignore_eos", "include_stop_str_in_output", "detokenize"):
            _require_bool(name, getattr(self, name))
        if self.stop is not None and not isinstance(self.stop, (str, list, tuple)):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}.")
        for stop in _as_list(self.stop):
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop must contain non-empty strings, got {stop!r}.")
        if self.stop and not self.detokenize:
            raise ValueError(f"stop strings need detokenize=True, got stop={self.stop!r}.")
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, (list, tuple)):
            raise ValueError(
                f"stop_token_ids must be a list of ints, got {self.stop_token_ids!r}."
            )
        for token_id in _as_list(self.stop_token_ids):
            _token_id("stop_token_ids", token_id)

    def _verify_outputs(self) -> None:
        for name in ("skip_special_tokens", "spaces_between_special_tokens"):
            _require_bool(name, getattr(self, name))
        if self.logprobs is not None:
            logprobs = _require_int("logprobs", self.logprobs)
            if not 0 <= logprobs <= MAX_LOGPROBS:
                raise ValueError(
                    f"logprobs must be in [0, {MAX_LOGPROBS}] (max_logprobs), got {logprobs}."
                )
        if self.prompt_logprobs is not None:
            raise ValueError(
                f"prompt_logprobs is not supported yet, got {self.prompt_logprobs!r}."
            )
        self._verify_logit_bias()
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise ValueError(f"extra_args must be a dict, got {self.extra_args!r}.")

    def _verify_logit_bias(self) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise ValueError(
                f"logit_bias must be a dict of token id to bias, got {self.logit_bias!r}."
            )
        if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(
                f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} tokens, "
                f"got {len(self.logit_bias)}."
            )
        for token_id, bias in self.logit_bias.items():
            _bias_token_id(token_id)
            if abs(_require_number("logit_bias value", bias)) > _MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}.")

    def _normalize(self) -> None:
        self.stop = _as_list(self.stop)
        self.stop_token_ids = [int(i) for i in _as_list(self.stop_token_ids)]
        if self.logit_bias is not None:
            self.logit_bias = {
                _bias_token_id(k): float(v) for k, v in self.logit_bias.items()
            }
        for name in _FLOAT_FIELDS:
            setattr(self, name, float(getattr(self, name)))
        for name in _OPTIONAL_INT_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))
        if self.sampling_type == SamplingType.GREEDY:
            self.top_p, self.top_k, self.min_p = 1.0, -1, 0.0


SamplingParams.__signature__ = inspect.Signature(
    [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
        for f in dataclasses.fields(SamplingParams)
    ]
)
