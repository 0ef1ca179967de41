"""Price every candidate layout with the profile, simulate the workload on it, find its
goodput, and pick the best: highest goodput, near-ties (within 2%) to the lower mean TPOT."""
from dataclasses import dataclass
from typing import Callable, Optional

from vllm.planner.goodput import Goodput, deployment_goodput
from vllm.planner.instance_cost import CommCost, InstanceCost, TransferCost
from vllm.planner.layouts import Candidate, Layout
from vllm.planner.profile import Profile
from vllm.planner.sim_metrics import SimSummary, summarize_outcome
from vllm.planner.simulate import Deployment, InstanceSpec, simulate
from vllm.planner.workload import Slos, Workload

GOODPUT_TIE = 0.02


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")


@dataclass(frozen=True)
class PlanInputs:
    profile: Profile
    workload: Workload
    slos: Slos
    limits: SchedulerLimits
    transfer: TransferCost
    comm: CommCost = CommCost()
    goodput_seeds: int = 3


@dataclass
class Prediction:
    layout: Layout
    problem: Optional[str] = None
    summary: Optional[SimSummary] = None
    goodput: Optional[Goodput] = None

    def to_json(self) -> dict:
        return {"layout": self.layout.to_json(), "problem": self.problem,
                "prediction": self.summary.to_json() if self.summary else None,
                "goodput_rps": self.goodput.rate if self.goodput else None,
                "goodput_bounded": self.goodput.bounded if self.goodput else None}


def build_deployment(layout: Layout, inputs: PlanInputs) -> Deployment:
    def instances(count: int, tp: int) -> tuple[InstanceSpec, ...]:
        cost = InstanceCost(inputs.profile.cost_for(layout.threads_per_rank), tp,
                            inputs.profile.shape, inputs.comm)
        spec = InstanceSpec(cost.seconds, inputs.limits.max_num_seqs,
                            inputs.limits.max_num_batched_tokens)
        return (spec,) * count

    if layout.is_colocated:
        return Deployment(colocated=instances(layout.num_decode, layout.decode_tp))
    return Deployment(prefill=instances(layout.num_prefill, layout.prefill_tp),
                      decode=instances(layout.num_decode, layout.decode_tp),
                      transfer=inputs.transfer.times(
                          inputs.profile.shape.transfer_copies(layout.decode_tp)))


def predict(candidate: Candidate, inputs: PlanInputs) -> Prediction:
    if candidate.problem:
        return Prediction(candidate.layout, candidate.problem)
    deployment = build_deployment(candidate.layout, inputs)
    summary = summarize_outcome(simulate(deployment, inputs.workload), inputs.slos)
    goodput = deployment_goodput(deployment, inputs.workload, inputs.slos,
                                 inputs.goodput_seeds)
    return Prediction(candidate.layout, None, summary, goodput)


def predict_all(candidates: list[Candidate], inputs: PlanInputs,
                log: Callable[[str], None] = lambda line: None) -> list[Prediction]:
    predictions = []
    for candidate in candidates:
        predictions.append(predict(candidate, inputs))
        log(f"simulated {candidate.layout.name}")
    return predictions


def recommend(predictions: list[Prediction]) -> Optional[Prediction]:
    """Highest goodput; within GOODPUT_TIE of the best, the lowest mean TPOT."""
    viable = [p for p in predictions if p.summary is not None]
    if not viable:
        return None
    best_rate = max(p.goodput.rate for p in viable)
    close = [p for p in viable if p.goodput.rate >= best_rate * (1 - GOODPUT_TIE)]
    return min(close, key=lambda p: (p.summary.mean_tpot_ms, -p.goodput.rate))
