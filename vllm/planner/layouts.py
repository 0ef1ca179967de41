"""Candidate layouts of the cores: one colocated instance (TP 1 or more), or x prefill and
y decode instances (xPyD) with their own TP sizes. Every rank of a layout gets the same
number of cores (threads), num_cores // ranks; ranks never share cores."""
import itertools
from dataclasses import dataclass
from typing import NamedTuple, Optional

from vllm.planner.model_shape import ModelShape


@dataclass(frozen=True)
class Layout:
    num_prefill: int  # 0: colocated
    num_decode: int  # colocated: the number of colocated instances
    prefill_tp: int
    decode_tp: int
    threads_per_rank: int

    @property
    def is_colocated(self) -> bool:
        return self.num_prefill == 0

    @property
    def num_ranks(self) -> int:
        return self.num_prefill * self.prefill_tp + self.num_decode * self.decode_tp

    @property
    def name(self) -> str:
        threads = f"{self.threads_per_rank} thr/rank"
        if self.is_colocated:
            return f"colocated TP={self.decode_tp} ({threads})"
        tp = (f"TP={self.prefill_tp}" if self.prefill_tp == self.decode_tp
              else f"TP={self.prefill_tp}/{self.decode_tp}")
        return f"{self.num_prefill}P{self.num_decode}D {tp} ({threads})"

    def to_json(self) -> dict:
        return {"name": self.name, "num_prefill": self.num_prefill,
                "num_decode": self.num_decode, "prefill_tp": self.prefill_tp,
                "decode_tp": self.decode_tp, "threads_per_rank": self.threads_per_rank}


class Candidate(NamedTuple):
    layout: Layout
    problem: Optional[str]  # why it cannot run (a TP size the model refuses), or None


def colocated(num_cores: int, tp: int) -> Layout:
    return Layout(0, 1, tp, tp, num_cores // tp)


def disaggregated(num_cores: int, num_prefill: int, num_decode: int, prefill_tp: int,
                  decode_tp: int) -> Layout:
    ranks = num_prefill * prefill_tp + num_decode * decode_tp
    return Layout(num_prefill, num_decode, prefill_tp, decode_tp, num_cores // ranks)


def enumerate_layouts(num_cores: int, shape: ModelShape, max_instances: int = 4,
                      max_tp: Optional[int] = None) -> list[Candidate]:
    """Every layout whose ranks fit on num_cores, colocated first; TP sizes the model cannot
    take are listed with the reason."""
    if num_cores < 1:
        raise ValueError(f"--num-cores must be at least 1, got {num_cores}")
    if max_instances < 1:
        raise ValueError(f"--max-instances must be at least 1, got {max_instances}")
    tp_sizes = range(1, min(num_cores, max_tp or num_cores) + 1)
    layouts = [colocated(num_cores, tp) for tp in tp_sizes]
    roles = range(1, max_instances + 1)
    for x, y, tp_p, tp_d in itertools.product(roles, roles, tp_sizes, tp_sizes):
        if x * tp_p + y * tp_d <= num_cores:
            layouts.append(disaggregated(num_cores, x, y, tp_p, tp_d))
    return [Candidate(layout, _problem(layout, shape)) for layout in layouts]


def _problem(layout: Layout, shape: ModelShape) -> Optional[str]:
    sizes = {layout.decode_tp} if layout.is_colocated else {layout.prefill_tp, layout.decode_tp}
    for tp in sorted(sizes):
        problem = shape.tp_problem(tp)
        if problem:
            return problem
    return None


def thread_counts(candidates: list[Candidate]) -> list[int]:
    """The per-rank thread counts a profile must cover to price these candidates."""
    return sorted({c.layout.threads_per_rank for c in candidates if c.problem is None},
                  reverse=True)
