"""VLLM_CPU_OMP_THREADS_BIND: one core list per rank, or an even split of the cores."""
import os

import pytest
import torch

from vllm.worker.thread_binding import (ThreadBinding, bind_rank_threads, parse_core_list,
                                        split_cores_evenly, thread_binding_for_rank)


def test_parse_core_list():
    assert parse_core_list("0-3") == [0, 1, 2, 3]
    assert parse_core_list("6, 0-1,3") == [0, 1, 3, 6]
    for bad in ("a-b", "3-1", "-1", ""):
        with pytest.raises(ValueError, match="VLLM_CPU_OMP_THREADS_BIND"):
            parse_core_list(bad)


def test_split_evenly_and_share_when_short():
    assert split_cores_evenly(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_cores_evenly(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5]]
    assert split_cores_evenly([0, 1], 3) == [[0], [1], [0]]


@pytest.mark.parametrize("setting", [None, "auto", " auto "])
def test_auto_splits_the_available_cores(setting):
    cores = list(range(8))
    assert thread_binding_for_rank(1, 2, setting, cores) == ThreadBinding([4, 5, 6, 7], 4)


def test_explicit_ranges_per_rank():
    assert thread_binding_for_rank(0, 2, "0-3|4-7", []) == ThreadBinding([0, 1, 2, 3], 4)
    assert thread_binding_for_rank(1, 2, "0-3|4,6", []) == ThreadBinding([4, 6], 2)
    with pytest.raises(ValueError, match="lists 2 core range.* but there are 3"):
        thread_binding_for_rank(0, 3, "0-3|4-7", [])


def test_nobind_sets_only_the_thread_count():
    assert thread_binding_for_rank(0, 3, "nobind", list(range(8))) == ThreadBinding(None, 2)
    assert thread_binding_for_rank(0, 4, "nobind", [0]) == ThreadBinding(None, 1)


def test_bind_applies_affinity_and_threads(monkeypatch):
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    first = min(affinity)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{first}|{first}")
    try:
        assert bind_rank_threads(1, 2) == ThreadBinding([first], 1)
        assert os.sched_getaffinity(0) == {first} and torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
