"""Bad tensor-parallel sizes and backends stop start-up with messages naming the numbers."""
import pytest

from vllm.config import ConfigError, ParallelConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.executor.factory import executor_class, resolve_backend


def config_folder(tmp_path, heads, kv_heads, intermediate=128):
    from transformers import Qwen2Config
    Qwen2Config(vocab_size=64, hidden_size=heads * 8, intermediate_size=intermediate,
                num_hidden_layers=1, num_attention_heads=heads,
                num_key_value_heads=kv_heads, max_position_embeddings=64,
                architectures=["Qwen2ForCausalLM"]).save_pretrained(tmp_path)
    return str(tmp_path)


def test_demo_model_rejects_four_ranks(demo_model_dir):
    with pytest.raises(ConfigError, match=r"3 KV heads .* tensor_parallel_size=4"):
        EngineArgs(demo_model_dir, tensor_parallel_size=4).create_engine_config()


@pytest.mark.parametrize("tp", [2, 3, 6])
def test_demo_model_accepts(demo_model_dir, tp):
    config = EngineArgs(demo_model_dir, tensor_parallel_size=tp).create_engine_config()
    assert config.parallel_config.tensor_parallel_size == tp


@pytest.mark.parametrize("heads, kv_heads, tp, ok", [
    (4, 2, 2, True), (4, 2, 4, True), (8, 2, 8, True), (4, 2, 3, False),
    (12, 4, 3, True), (12, 3, 6, True), (8, 8, 4, True), (9, 3, 2, True),
    (4, 2, 6, False), (6, 3, 6, True), (4, 4, 8, False), (6, 4, 2, False)])
def test_head_split_rules(tmp_path, heads, kv_heads, tp, ok):
    args = EngineArgs(config_folder(tmp_path, heads, kv_heads, intermediate=24 * 8),
                      tensor_parallel_size=tp)
    if ok:
        args.create_engine_config()
        return
    with pytest.raises(ConfigError, match="heads") as error:
        args.create_engine_config()
    assert str(heads if heads % kv_heads or tp > heads else kv_heads) in str(error.value)


def test_intermediate_size_must_split(tmp_path):
    args = EngineArgs(config_folder(tmp_path, 4, 2, intermediate=130), tensor_parallel_size=4)
    with pytest.raises(ConfigError, match="intermediate_size=130 .* tensor_parallel_size=4"):
        args.create_engine_config()


@pytest.mark.parametrize("kwargs, match", [
    (dict(tensor_parallel_size=0), "tensor_parallel_size must be a positive integer"),
    (dict(tensor_parallel_size=1.5), "tensor_parallel_size must be a positive integer"),
    (dict(distributed_executor_backend="mpi"), "'mp', 'ray' or 'uni', got 'mpi'"),
    (dict(tensor_parallel_size=2, distributed_executor_backend="uni"), "'uni' runs one rank"),
])
def test_bad_engine_args(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EngineArgs("unused", **kwargs).create_engine_config()


@pytest.mark.parametrize("tp, backend, expected", [
    (1, None, "uni"), (2, None, "mp"), (1, "mp", "mp"), (2, "ray", "ray"), (1, "uni", "uni")])
def test_backend_resolution(tp, backend, expected):
    assert resolve_backend(ParallelConfig(tp, backend)) == expected


def test_factory_classes_and_errors():
    assert executor_class(ParallelConfig(1, None)).__name__ == "UniProcExecutor"
    assert executor_class(ParallelConfig(2, None)).__name__ == "MultiprocExecutor"
    assert executor_class(ParallelConfig(2, "ray")).__name__ == "RayExecutor"
    with pytest.raises(ValueError, match="one of uni, mp, ray"):
        executor_class(ParallelConfig(2, "nccl"))
    with pytest.raises(ValueError, match="'uni' runs one rank"):
        executor_class(ParallelConfig(2, "uni"))
