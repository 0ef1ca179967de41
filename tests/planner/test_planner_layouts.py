import pytest

from vllm.planner.layouts import Layout, enumerate_layouts, thread_counts
from vllm.planner.model_shape import ModelShape

SMOLLM2 = ModelShape(num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3,
                     head_dim=64, intermediate_size=1536, max_model_len=8192)
FOUR_HEADS = ModelShape(2, 64, 4, 2, 16, 128, 512)


def names(candidates):
    return [c.layout.name for c in candidates]


def test_two_cores_give_colocated_tp1_tp2_and_1p1d():
    candidates = enumerate_layouts(2, SMOLLM2)
    assert names(candidates) == ["colocated TP=1 (2 thr/rank)", "colocated TP=2 (1 thr/rank)",
                                 "1P1D TP=1 (1 thr/rank)"]
    assert all(c.problem is None for c in candidates)
    assert thread_counts(candidates) == [2, 1]


def test_one_core_has_only_the_colocated_layout():
    assert names(enumerate_layouts(1, SMOLLM2)) == ["colocated TP=1 (1 thr/rank)"]


def test_every_layout_fits_the_cores():
    for cores in (3, 4, 8):
        for candidate in enumerate_layouts(cores, SMOLLM2):
            layout = candidate.layout
            assert layout.num_ranks * layout.threads_per_rank <= cores
            assert layout.threads_per_rank >= 1


def test_four_cores_include_2p2d_and_mixed_tp():
    layouts = {c.layout.name for c in enumerate_layouts(4, SMOLLM2)}
    assert "2P2D TP=1 (1 thr/rank)" in layouts
    assert "1P1D TP=2 (1 thr/rank)" in layouts
    assert "1P2D TP=1 (1 thr/rank)" in layouts
    assert "1P1D TP=1 (2 thr/rank)" in layouts
    assert "1P1D TP=2/1 (1 thr/rank)" in layouts


def test_max_instances_and_max_tp_limit_the_search():
    small = enumerate_layouts(8, SMOLLM2, max_instances=1, max_tp=1)
    assert names(small) == ["colocated TP=1 (8 thr/rank)", "1P1D TP=1 (4 thr/rank)"]


def test_tp_sizes_the_model_refuses_are_listed_with_the_reason():
    candidates = {c.layout.name: c.problem for c in enumerate_layouts(3, FOUR_HEADS)}
    assert candidates["colocated TP=3 (1 thr/rank)"] is not None
    assert "KV heads" in candidates["colocated TP=3 (1 thr/rank)"]
    assert candidates["colocated TP=2 (1 thr/rank)"] is None


def test_thread_counts_skip_refused_layouts():
    refused_only = [c for c in enumerate_layouts(3, FOUR_HEADS) if c.problem]
    assert thread_counts(refused_only) == []


def test_bad_core_count_is_refused():
    with pytest.raises(ValueError, match="num-cores"):
        enumerate_layouts(0, SMOLLM2)


def test_layout_properties():
    layout = Layout(2, 1, 2, 1, 1)
    assert not layout.is_colocated
    assert layout.num_ranks == 5
    assert layout.name == "2P1D TP=2/1 (1 thr/rank)"


def test_mla_shape_counts_the_latent_and_a_copy_per_decode_rank():
    from transformers import DeepseekV3Config
    shape = ModelShape.from_hf_config(DeepseekV3Config())  # DeepSeek-R1's sizes
    assert shape.kv_bytes_per_token == 61 * (512 + 64) * 4
    assert shape.num_kv_heads == 128  # heads split one by one, the latent replicated
    assert ModelShape.from_json(shape.to_json()) == shape
    candidates = enumerate_layouts(3, shape)
    assert all(c.problem is None for c in candidates)
    assert any(not c.layout.is_colocated for c in candidates)
    # Each decode rank receives the whole latent; GQA heads are split over them.
    assert [shape.transfer_copies(tp) for tp in (1, 2, 4)] == [1, 2, 4]
    assert SMOLLM2.transfer_copies(4) == 1
