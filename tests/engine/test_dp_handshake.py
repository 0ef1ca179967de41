"""The head/headless handshake in one process: a matching node gets its ranks'
endpoints, a mismatched one is refused with one line on both sides, a rank is given once."""

import pytest

from free_ports import free_port
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.dp_handshake import HeadListener, JoinRefused, RankEndpoint, join_head


@pytest.fixture
def layout(tiny_model_dirs):
    return dict(model=tiny_model_dirs["llama"], max_model_len=128, dtype="float32",
                data_parallel_size=3, data_parallel_size_local=1,
                data_parallel_rpc_port=free_port())


@pytest.fixture
def head(layout):
    refusals = []
    endpoints = {rank: RankEndpoint(rank, [f"tcp://127.0.0.1:{100 + rank}"],
                                    [f"tcp://127.0.0.1:{200 + rank}"]) for rank in (1, 2)}
    listener = HeadListener(EngineArgs(**layout).create_engine_config(), endpoints,
                            refusals.append)
    listener.start()
    yield listener, refusals
    listener.close()


def node(layout, **changes):
    return EngineArgs(**{**layout, "data_parallel_start_rank": 1, **changes}
                      ).create_engine_config()


def test_a_matching_node_gets_its_ranks_once(head, layout):
    listener, refusals = head
    assert [e.rank for e in join_head(node(layout), timeout_s=30)] == [1]
    with pytest.raises(JoinRefused, match=r"data-parallel rank 1 asked for, but the head "
                       r"waits for \[2\]$"):
        join_head(node(layout), timeout_s=30)
    endpoints = join_head(node(layout, data_parallel_start_rank=2), timeout_s=30)
    assert endpoints[0].input_addresses == ["tcp://127.0.0.1:102"]
    assert len(refusals) == 1


@pytest.mark.parametrize("changes, line", [
    ({"tensor_parallel_size": 2},
     "tensor parallel size differs: the head has 1, the headless node 2"),
    ({"data_parallel_size": 4}, "data parallel size differs: the head has 3, the "
     "headless node 4"),
    ({"dtype": "bfloat16"}, "dtype differs: the head has 'float32', the headless node "
     "'bfloat16'"),
    ({"served_model_name": "other"}, "model differs"),
])
def test_a_mismatched_node_is_refused_on_both_sides(head, layout, changes, line):
    listener, refusals = head
    with pytest.raises(JoinRefused) as info:
        join_head(node(layout, **changes), timeout_s=30)
    assert "\n" not in str(info.value) and line in str(info.value)
    assert refusals == [str(info.value).split("refused this node: ")[1]]
    assert sorted(listener.waiting) == [1, 2]
