"""Step time of an instance with a given thread count and TP size, and KV transfer time."""
from dataclasses import asdict, dataclass, replace

from vllm.planner.cost_model import PAIR_UNIT, StepCost, StepLoad
from vllm.planner.model_shape import ModelShape

README_KV_BANDWIDTH_GBPS = 1.8  # benchmarks/benchmark_kv_transfer.py, gloo on this host


@dataclass(frozen=True)
class CommCost:
    """Tensor-parallel costs: one all-reduce is latency + ring traffic / bandwidth; each step
    also pays for sending the SchedulerOutput to the ranks."""
    allreduce_latency_s: float = 0.35e-3  # benchmarks/benchmark_allreduce.py, gloo, 2 ranks
    allreduce_bytes_per_s: float = 2e9
    tp_step_overhead_s: float = 1e-3

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TransferCost:
    """What a disaggregated request pays between its prefill and its first decode step:
    the KV bytes at the transfer bandwidth, plus a fixed overhead (proxy hop, the decode
    instance's ready/accept round trip)."""
    kv_bytes_per_token: float
    bandwidth_bytes_per_s: float = README_KV_BANDWIDTH_GBPS * 1e9
    overhead_s: float = 0.06

    def seconds(self, num_tokens: int) -> float:
        return self.overhead_s + num_tokens * self.kv_bytes_per_token / self.bandwidth_bytes_per_s

    def times(self, copies: int) -> "TransferCost":
        """The cost when every token's KV moves `copies` times."""
        return replace(self, kv_bytes_per_token=self.kv_bytes_per_token * copies)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InstanceCost:
    """One instance: every rank runs `threads` intra-op threads; TP ranks split the linear
    layers evenly and the attention by KV group, then all-reduce."""
    step_cost: StepCost
    tp_size: int = 1
    shape: ModelShape | None = None
    comm: CommCost = CommCost()

    def __post_init__(self):
        if self.tp_size < 1:
            raise ValueError(f"tensor-parallel size must be at least 1, got {self.tp_size}")
        if self.tp_size > 1 and self.shape is None:
            raise ValueError("a tensor-parallel instance needs the model's shape")

    def seconds(self, load: StepLoad) -> float:
        if self.tp_size == 1:
            return self.step_cost.seconds(load)
        return self._compute_seconds(load) + self._comm_seconds(load)

    def _compute_seconds(self, load: StepLoad) -> float:
        cost, share = self.step_cost, self.shape.attention_share(self.tp_size)
        linear = (cost.per_prefill_token * load.prefill_tokens +
                  cost.per_decode_seq * load.decode_seqs) / self.tp_size
        attention = (cost.per_prefill_kpair * load.prefill_pairs / PAIR_UNIT +
                     cost.per_context_token * load.decode_context_tokens) * share
        return cost.intercept + linear + attention

    def _comm_seconds(self, load: StepLoad) -> float:
        num_tokens = load.prefill_tokens + load.decode_seqs
        message_bytes = num_tokens * self.shape.hidden_size * self.shape.dtype_bytes
        ring_factor = 2 * (self.tp_size - 1) / self.tp_size
        one = (self.comm.allreduce_latency_s +
               ring_factor * message_bytes / self.comm.allreduce_bytes_per_s)
        return self.shape.allreduces_per_step * one + self.comm.tp_step_overhead_s
