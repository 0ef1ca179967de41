from vllm.planner.goodput import Goodput
from vllm.planner.layouts import Layout
from vllm.planner.recommend import Prediction, recommend
from vllm.planner.report import format_table
from vllm.planner.sim_metrics import SimSummary


def prediction(name_tp: int, goodput: float, mean_tpot_ms: float) -> Prediction:
    summary = SimSummary(10.0, 1.0, 100.0, 600.0, 500.0, 450.0, 900.0, mean_tpot_ms,
                         mean_tpot_ms, mean_tpot_ms, mean_tpot_ms, mean_tpot_ms, 120.0, 0.95)
    return Prediction(Layout(0, 1, name_tp, name_tp, 1), None, summary, Goodput(goodput, True))


def test_highest_goodput_wins():
    best = recommend([prediction(1, 2.0, 50.0), prediction(2, 3.0, 80.0)])
    assert best.layout.decode_tp == 2


def test_near_tie_goes_to_the_lower_mean_tpot():
    best = recommend([prediction(1, 3.0, 80.0), prediction(2, 2.95, 50.0)])
    assert best.layout.decode_tp == 2
    best = recommend([prediction(1, 3.0, 80.0), prediction(2, 2.8, 50.0)])
    assert best.layout.decode_tp == 1


def test_refused_layouts_are_never_recommended_and_are_listed():
    refused = Prediction(Layout(0, 1, 3, 3, 1), "heads do not split")
    assert recommend([refused]) is None
    best = recommend([refused, prediction(1, 0.5, 90.0)])
    assert best.layout.decode_tp == 1
    table = format_table([refused, prediction(1, 0.5, 90.0)])
    assert "| colocated TP=1 (1 thr/rank) | 500 ms | 900 ms | 90.0 ms |" in table
    assert "not possible: colocated TP=3 (1 thr/rank): heads do not split" in table
