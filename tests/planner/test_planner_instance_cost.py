import pytest

from vllm.planner.cost_model import StepCost, StepLoad
from vllm.planner.instance_cost import CommCost, InstanceCost, TransferCost
from vllm.planner.model_shape import ModelShape

COST = StepCost(0.01, 0.002, 0.001, 0.003, 1e-5)
SHAPE = ModelShape(num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                   intermediate_size=1536, max_model_len=8192)


def test_demo_model_kv_bytes_per_token():
    assert SHAPE.kv_bytes_per_token == 46_080


def test_tp1_is_the_profiled_cost():
    load = StepLoad(128, 8256.0, 4, 1000)
    assert InstanceCost(COST).seconds(load) == COST.seconds(load)


def test_tp2_splits_linear_evenly_attention_by_kv_group_and_adds_allreduces():
    comm = CommCost(allreduce_latency_s=1e-4, allreduce_bytes_per_s=1e9, tp_step_overhead_s=0)
    load = StepLoad(100, 5000.0, 4, 2000)
    linear = (0.002 * 100 + 0.003 * 4) / 2
    attention = (0.001 * 5 + 1e-5 * 2000) * 2 / 3  # 3 KV heads over 2 ranks: 2 on one
    message = 104 * 576 * 4  # tokens x hidden x float32
    allreduce = 61 * (1e-4 + 1.0 * message / 1e9)  # 2 per layer + embedding; ring 2(n-1)/n = 1
    expected = 0.01 + linear + attention + allreduce
    assert InstanceCost(COST, 2, SHAPE, comm).seconds(load) == pytest.approx(expected)


def test_attention_share_when_kv_heads_are_replicated():
    assert SHAPE.attention_share(3) == pytest.approx(1 / 3)
    assert SHAPE.attention_share(9) == pytest.approx(1 / 9)
    assert SHAPE.attention_share(1) == 1.0


def test_tp_needs_a_shape_and_a_positive_size():
    with pytest.raises(ValueError):
        InstanceCost(COST, 2)
    with pytest.raises(ValueError):
        InstanceCost(COST, 0)


def test_transfer_time_is_bytes_over_bandwidth_plus_overhead():
    transfer = TransferCost(46_080, 1.8e9, 0.06)
    assert transfer.seconds(512) == pytest.approx(0.06 + 512 * 46_080 / 1.8e9)


def test_transfer_of_several_copies_moves_their_bytes():
    transfer = TransferCost(4_608, 1.8e9, 0.06).times(2)  # an MLA latent to 2 decode ranks
    assert transfer.seconds(512) == pytest.approx(0.06 + 512 * 2 * 4_608 / 1.8e9)
