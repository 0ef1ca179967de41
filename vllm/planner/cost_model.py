"""How long one engine step takes, as a linear function of what the step holds.

    step_s = intercept
           + per_prefill_token   * prefill tokens in the step
           + per_prefill_pair    * (query, key) pairs prefill attention computes
           + per_decode_seq      * requests decoding one token in the step
           + per_context_token   * KV tokens those decodes read

The linear layers make the token and sequence terms; attention makes the pair and
context terms. Coefficients are fitted by least squares on relative error (a 30 ms
decode step counts as much as a 2 s prefill) and kept non-negative.
"""
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import numpy as np

PAIR_UNIT = 1000  # prefill attention pairs are counted in thousands (keeps the fit scaled)


class StepLoad(NamedTuple):
    """What one step computes."""
    prefill_tokens: int = 0
    prefill_pairs: float = 0.0  # (query, key) pairs of prefill attention
    decode_seqs: int = 0
    decode_context_tokens: int = 0


def prefill_pairs(num_computed: int, num_new: int) -> float:
    """Attention pairs of a prefill chunk of `num_new` tokens after `num_computed` cached
    ones: each new token attends to everything before it and itself."""
    return num_new * num_computed + num_new * (num_new + 1) / 2


def features(load: StepLoad) -> np.ndarray:
    return np.array([1.0, load.prefill_tokens, load.prefill_pairs / PAIR_UNIT,
                     load.decode_seqs, load.decode_context_tokens], dtype=float)


@dataclass(frozen=True)
class StepCost:
    """Fitted coefficients (seconds per unit) of one instance's step time."""
    intercept: float
    per_prefill_token: float
    per_prefill_kpair: float
    per_decode_seq: float
    per_context_token: float

    def coefficients(self) -> np.ndarray:
        return np.array([self.intercept, self.per_prefill_token, self.per_prefill_kpair,
                         self.per_decode_seq, self.per_context_token])

    def seconds(self, load: StepLoad) -> float:
        return float(features(load) @ self.coefficients())

    def variable_seconds(self, load: StepLoad) -> float:
        """The part of the step that grows with its contents (what TP divides)."""
        return self.seconds(load) - self.intercept

    def describe(self) -> str:
        return (f"{self.intercept * 1e3:.1f} ms + {self.per_prefill_token * 1e3:.3f} ms/prefill "
                f"token + {self.per_prefill_kpair * 1e3:.4f} ms/1k attention pairs + "
                f"{self.per_decode_seq * 1e3:.2f} ms/decode seq + "
                f"{self.per_context_token * 1e6:.2f} us/context token")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "StepCost":
        return cls(**{name: float(data[name]) for name in cls.__dataclass_fields__})


class Sample(NamedTuple):
    """One measured step."""
    load: StepLoad
    seconds: float


def fit_step_cost(samples: Sequence[Sample]) -> StepCost:
    """Non-negative least squares on relative error; needs samples that vary every term."""
    if len(samples) < 5:
        raise ValueError(f"fitting the step cost needs at least 5 samples, got {len(samples)}")
    if any(sample.seconds <= 0 for sample in samples):
        raise ValueError("every measured step time must be positive")
    weights = np.array([1.0 / sample.seconds for sample in samples])
    matrix = np.stack([features(sample.load) for sample in samples]) * weights[:, None]
    target = np.array([sample.seconds for sample in samples]) * weights
    return StepCost(*(float(x) for x in non_negative_least_squares(matrix, target)))


def non_negative_least_squares(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """argmin |matrix @ x - target| with x >= 0: drop the most negative term, refit, repeat."""
    active = list(range(matrix.shape[1]))
    while True:
        solution = np.zeros(matrix.shape[1])
        if active:
            solution[active] = np.linalg.lstsq(matrix[:, active], target, rcond=None)[0]
        negative = [index for index in active if solution[index] < 0]
        if not negative:
            return solution
        active.remove(min(negative, key=lambda index: solution[index]))
