"""A short profiling run: step times of the model on this machine, per thread count, and
the cost model fitted to them; saved as JSON so later plans can reuse it."""
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import numpy as np

from vllm.planner.cost_model import Sample, StepCost, StepLoad, fit_step_cost, prefill_pairs
from vllm.planner.model_shape import ModelShape

PROFILE_VERSION = 1
SHORT_CONTEXT = 32
MAX_PROFILED_BATCH = 64
DECODE_STEPS = 5
MIXED_STEPS = 2  # each carries a whole prompt: fewer, they cost as much as a prefill
PREFILL_REPEATS = 2


class DecodePoint(NamedTuple):
    batch_size: int
    context_len: int
    prefill_len: int = 0  # a whole prompt prefilled in the same step (a mixed step)


@dataclass(frozen=True)
class ProfilePlan:
    """Which step shapes to time: prompts prefilled together, and decode batches."""
    prefill_groups: tuple[tuple[int, ...], ...]
    decode_points: tuple[DecodePoint, ...]

    @property
    def max_context(self) -> int:
        longest_prefill = max(sum(group) for group in self.prefill_groups)
        longest_decode = max(p.context_len for p in self.decode_points) + DECODE_STEPS + 2
        return max(longest_prefill, longest_decode)

    def num_blocks(self, block_size: int = 16) -> int:
        """KV blocks the largest shape holds at once, with room to spare."""
        decode_tokens = max(p.batch_size * (p.context_len + DECODE_STEPS + 2) + p.prefill_len
                            for p in self.decode_points)
        tokens = max(decode_tokens, self.max_context)
        return 2 * (-(-tokens // block_size)) + max(p.batch_size for p in self.decode_points)


def plan_for_workload(input_len: int, output_len: int, max_num_seqs: int,
                      max_num_batched_tokens: int,
                      max_model_len: Optional[int] = None) -> ProfilePlan:
    """Prompt lengths around the workload's (a short one, its own, twice its own, and four
    quarter-length prompts together to tell the attention term from the linear one);
    decode batches 1, 2, 4, ... at a short context; a few at the workload's context."""
    if max_model_len is not None and input_len + output_len > max_model_len:
        raise ValueError(f"--input-len + --output-len = {input_len + output_len} exceeds the "
                         f"model's {max_model_len} tokens")
    context = input_len + output_len
    longest = max_model_len - DECODE_STEPS - 2 if max_model_len else 2 * context
    budget = min(max_num_batched_tokens, max_model_len or max_num_batched_tokens)
    prompt = min(input_len, budget)
    groups = {(min(64, prompt),), (prompt,), (min(2 * input_len, budget),)}
    if prompt >= 16:
        groups.add((prompt // 4,) * 4)
    largest_batch = min(max_num_seqs, MAX_PROFILED_BATCH)
    batches = sorted({min(2 ** power, largest_batch) for power in range(7)})
    context = min(context, longest)
    few = min(4, largest_batch)
    points = [DecodePoint(b, SHORT_CONTEXT) for b in batches]
    points += [DecodePoint(1, min(2 * context, longest)), DecodePoint(few, context),
               DecodePoint(min(8, largest_batch), context // 2),
               DecodePoint(few, context, prompt if few + prompt <= budget else 0)]
    return ProfilePlan(tuple(sorted(groups)), tuple(dict.fromkeys(points)))


def prefill_load(prompt_lens: tuple[int, ...]) -> StepLoad:
    return StepLoad(sum(prompt_lens), sum(prefill_pairs(0, n) for n in prompt_lens), 0, 0)


def decode_load(point: DecodePoint) -> StepLoad:
    """The middle of the timed decode steps (contexts grow by one a step)."""
    context = point.context_len + 1 + DECODE_STEPS // 2
    return StepLoad(point.prefill_len, prefill_pairs(0, point.prefill_len) if point.prefill_len
                    else 0.0, point.batch_size, point.batch_size * context)


@dataclass
class ThreadProfile:
    num_threads: int
    samples: list[Sample]
    cost: StepCost

    def relative_errors(self) -> np.ndarray:
        return np.array([abs(self.cost.seconds(s.load) - s.seconds) / s.seconds
                         for s in self.samples])

    def fit_errors(self) -> tuple[float, float]:
        """Median and largest relative error of the fitted cost on the measured steps."""
        errors = self.relative_errors()
        return float(np.median(errors)), float(np.max(errors))

    def to_json(self) -> dict:
        median_error, max_error = self.fit_errors()
        return {"num_threads": self.num_threads, "cost": self.cost.to_json(),
                "median_relative_error": median_error, "max_relative_error": max_error,
                "samples": [{"load": s.load._asdict(), "seconds": s.seconds}
                            for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict) -> "ThreadProfile":
        samples = [Sample(StepLoad(**s["load"]), float(s["seconds"])) for s in data["samples"]]
        return cls(int(data["num_threads"]), samples, StepCost.from_json(data["cost"]))


@dataclass
class Profile:
    model: str
    shape: ModelShape
    threads: dict[int, ThreadProfile] = field(default_factory=dict)
    load_average: Optional[float] = None  # 1-minute load when the profile started
    duration_s: float = 0.0

    def cost_for(self, num_threads: int) -> StepCost:
        if num_threads not in self.threads:
            raise ValueError(f"the profile has no measurements with {num_threads} thread(s) "
                             f"(it has {sorted(self.threads)}): profile again")
        return self.threads[num_threads].cost

    def to_json(self) -> dict:
        return {"version": PROFILE_VERSION, "model": self.model, "shape": self.shape.to_json(),
                "load_average": self.load_average, "duration_s": self.duration_s,
                "threads": [t.to_json() for t in self.threads.values()]}

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r} is not "
                             f"{PROFILE_VERSION}: profile again")
        threads = [ThreadProfile.from_json(t) for t in data["threads"]]
        return cls(data["model"], ModelShape.from_json(data["shape"]),
                   {t.num_threads: t for t in threads}, data.get("load_average"),
                   float(data.get("duration_s", 0.0)))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=2)
            handle.write("\n")


def load_profile(path: str) -> Profile:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"--profile-file {path}: not JSON ({error})") from None
    try:
        return Profile.from_json(data)
    except (KeyError, TypeError) as error:
        raise ValueError(f"--profile-file {path}: not a planner profile ({error!r})") from None


def run_profile(model: str, shape: ModelShape, thread_counts: list[int], plan: ProfilePlan,
                dtype: str = "float32", log: Callable[[str], None] = print) -> Profile:
    """Time the plan's step shapes at each thread count in one in-process engine."""
    from vllm.planner.engine_probe import EngineProbe
    if plan.max_context > shape.max_model_len:
        raise ValueError(f"the workload needs {plan.max_context} tokens of context; the "
                         f"model takes {shape.max_model_len}")
    started, load = time.perf_counter(), os.getloadavg()[0]
    max_batch = max(p.batch_size for p in plan.decode_points) + 1  # + a mixed step's prompt
    probe = EngineProbe(model, max_batch, plan.max_context, plan.num_blocks(), dtype)
    profile = Profile(model, shape, load_average=load)
    try:
        probe.time_prefill([8], 1)  # warm-up
        for num_threads in thread_counts:
            probe.set_threads(num_threads)
            samples = _measure(probe, plan)
            profile.threads[num_threads] = ThreadProfile(num_threads, samples,
                                                         fit_step_cost(samples))
            log(f"profiled {num_threads} thread(s): {len(samples)} step shapes, "
                f"{time.perf_counter() - started:.1f} s so far")
    finally:
        probe.close()
    profile.duration_s = time.perf_counter() - started
    return profile


def _measure(probe, plan: ProfilePlan) -> list[Sample]:
    samples = [Sample(prefill_load(group), probe.time_prefill(list(group), PREFILL_REPEATS))
               for group in plan.prefill_groups]
    for point in plan.decode_points:
        steps = MIXED_STEPS if point.prefill_len else DECODE_STEPS
        seconds = probe.time_decode(point.batch_size, point.context_len, steps,
                                    point.prefill_len or None)
        samples.append(Sample(decode_load(point), seconds))
    return samples
