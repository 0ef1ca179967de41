"""`vllm serve` flags: every seed flag is recognised; unbuilt features and bad values stop
start-up with one line naming the flag and exit code 2."""
import argparse
import json
import shlex
import subprocess

import pytest

from remote_server import REPO_ROOT, serve_command
from vllm.entrypoints.cli.serve import add_cli_args
from vllm.entrypoints.openai.cli_args import (ServeArgumentError, check_expert_parallel,
                                              engine_args_from_cli, flag_named_error)

KV_PRODUCER = json.dumps({
    "kv_connector": "LLMDataDistCMgrConnector", "kv_buffer_device": "npu",
    "kv_role": "kv_producer", "kv_parallel_size": 1, "kv_port": "20001", "engine_id": "0",
    "kv_connector_module_path": "vllm_ascend.distributed.llmdatadist_c_mgr_connector"})

# The prefill node P1 of the 4-node deployment guide, verbatim apart from the JSON quoting.
SEED_PREFILL_P1 = (
    "/models/deepseek_r1_w8a8 --host 0.0.0.0 --port 20002 --data-parallel-size 2 "
    "--data-parallel-size-local 1 --api-server-count 2 --data-parallel-address 172.19.32.175 "
    "--data-parallel-rpc-port 13356 --tensor-parallel-size 8 --enable-expert-parallel "
    "--seed 1024 --served-model-name deepseek --max-model-len 32768 "
    "--max-num-batched-tokens 32768 --max-num-seqs 256 --trust-remote-code --enforce-eager "
    f"--gpu-memory-utilization 0.9 --kv-transfer-config '{KV_PRODUCER}' "
    "--additional-config '{\"chunked_prefill_for_mla\":true}'")
SEED_DECODE_D2 = (
    "/models/deepseek_r1_w8a8 --host 0.0.0.0 --port 20002 --headless --data-parallel-size 4 "
    "--data-parallel-start-rank 2 --data-parallel-size-local 2 "
    "--data-parallel-address 172.19.123.51 --data-parallel-rpc-port 13356 "
    "--tensor-parallel-size 4 --enable-expert-parallel --seed 1024 "
    "--served-model-name deepseek --max-model-len 32768 --max-num-batched-tokens 256 "
    "--max-num-seqs 256 --trust-remote-code --gpu-memory-utilization 0.9 "
    f"--kv-transfer-config '{KV_PRODUCER.replace('producer', 'consumer')}' "
    "--additional-config '{\"torchair_graph_config\": {\"enabled\":true}}'")
SEED_README = "--tensor-parallel-size 2 /models/DeepSeek-R1-Distill-Qwen-32B"


def parse(command_line: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    add_cli_args(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *shlex.split(command_line)])


@pytest.mark.parametrize("command_line", [SEED_PREFILL_P1, SEED_DECODE_D2, SEED_README])
def test_every_seed_flag_is_recognised(command_line):
    args = parse(command_line)
    assert args.func is not None
    assert args.model_tag.startswith("/models/")


def test_accepted_seed_flags_reach_engine_args():
    args = parse("/m --host 0.0.0.0 --port 20002 --seed 1024 --served-model-name deepseek "
                 "--max-model-len 32768 --max-num-batched-tokens 256 --max-num-seqs 256 "
                 "--trust-remote-code --enforce-eager --gpu-memory-utilization 0.9 "
                 "--data-parallel-size 1 --api-server-count 1 --tensor-parallel-size 1 "
                 f"--kv-transfer-config '{KV_PRODUCER}' "
                 "--additional-config '{\"torchair_graph_config\": {\"enabled\": true}}'")
    engine_args = engine_args_from_cli(args)
    assert (engine_args.model, engine_args.seed, engine_args.served_model_name) == \
        ("/m", 1024, "deepseek")
    assert (engine_args.max_model_len, engine_args.max_num_batched_tokens,
            engine_args.max_num_seqs) == (32768, 256, 256)
    assert engine_args.trust_remote_code and engine_args.enforce_eager
    assert engine_args.gpu_memory_utilization == 0.9
    assert engine_args.kv_transfer_config["kv_role"] == "kv_producer"
    assert engine_args.additional_config == {"torchair_graph_config": {"enabled": True}}
    assert (args.host, args.port) == ("0.0.0.0", 20002)


def test_prefix_caching_switches_and_model_flag():
    assert engine_args_from_cli(parse("--no-enable-prefix-caching")).enable_prefix_caching is False
    assert engine_args_from_cli(parse("--enable-prefix-caching")).enable_prefix_caching is True
    assert engine_args_from_cli(parse("--model /x --block-size 32")).model == "/x"
    with pytest.raises(ServeArgumentError, match="--model"):
        engine_args_from_cli(parse("/a --model /b"))


@pytest.mark.parametrize("flags, message", [
    ("--data-parallel-size 2 --data-parallel-backend ray",
     "--data-parallel-backend ray: Ray data parallelism is not supported yet (use mp)"),
    ("--data-parallel-size 2 --enable-expert-parallel",
     "--enable-expert-parallel: expert parallelism across data-parallel ranks is not "
     "supported yet with --data-parallel-size > 1"),
    (f"--data-parallel-size 2 --kv-transfer-config '{KV_PRODUCER}'",
     "--kv-transfer-config: disaggregated prefill/decode is not supported yet with "
     "--data-parallel-size > 1"),
    ("--data-parallel-size-local 2",
     "--data-parallel-size-local 2: only makes sense with --data-parallel-size > 1"),
    ("--data-parallel-start-rank 1",
     "--data-parallel-start-rank 1: only makes sense with --data-parallel-size > 1"),
    ("--headless", "--headless: only makes sense with --data-parallel-size > 1"),
    ("--data-parallel-size 2 --data-parallel-start-rank 1",
     "--data-parallel-start-rank 1: only a --headless node starts above rank 0"),
    ("--data-parallel-size 2 --headless --data-parallel-start-rank 1 --api-server-count 2",
     "--api-server-count 2: a --headless node runs no API server"),
])
def test_unbuilt_or_contradictory_parallel_flags_are_refused_by_name(flags, message):
    with pytest.raises(ServeArgumentError) as info:
        engine_args_from_cli(parse(flags))
    assert str(info.value) == message


def test_data_parallel_flags_reach_engine_args():
    args = parse("--data-parallel-size 4 --data-parallel-size-local 2 --headless "
                 "--data-parallel-start-rank 2 --data-parallel-address 10.0.0.1 "
                 "--data-parallel-rpc-port 13356")
    engine_args = engine_args_from_cli(args)
    assert (engine_args.data_parallel_size, engine_args.data_parallel_size_local,
            engine_args.data_parallel_start_rank, engine_args.data_parallel_address,
            engine_args.data_parallel_rpc_port) == (4, 2, 2, "10.0.0.1", 13356)


@pytest.mark.parametrize("fields, fragment", [
    ({"data_parallel_size": 2, "data_parallel_start_rank": 2},
     "data_parallel_start_rank=2 is not a rank of data_parallel_size=2"),
    ({"data_parallel_size": 2, "data_parallel_size_local": 3},
     "data_parallel_start_rank=0 + data_parallel_size_local=3 runs past"),
    ({"data_parallel_size": 2, "data_parallel_size_local": 1,
      "data_parallel_address": "0.0.0.0"}, "data_parallel_address='0.0.0.0' is every"),
    ({"data_parallel_size": 2, "data_parallel_rpc_port": 70000},
     "data_parallel_rpc_port=70000 is not a port number"),
])
def test_data_parallel_layouts_are_checked(fields, fragment):
    from vllm.config import ConfigError
    from vllm.engine.arg_utils import EngineArgs
    with pytest.raises(ConfigError, match=fragment.replace("+", r"\+").replace("(", r"\(")):
        EngineArgs(**fields)._validate_scalars()


def test_no_op_parallel_defaults_are_accepted():
    engine_args_from_cli(parse("--data-parallel-size 1 --data-parallel-size-local 1 "
                               "--data-parallel-start-rank 0 --api-server-count 1"))


@pytest.mark.parametrize("flags, fragment", [
    ("--kv-transfer-config '{bad'", "--kv-transfer-config: malformed JSON"),
    ("--kv-transfer-config '[1]'", "expected a JSON object"),
    ("--kv-transfer-config '{\"kv_conector\": \"X\"}'", "unknown key 'kv_conector'"),
    ("--kv-transfer-config '{\"kv_role\": \"kv_boss\"}'", "kv_role must be one of"),
    ("--kv-transfer-config '{\"kv_rank\": \"one\"}'", "'kv_rank' must be int"),
    ("--kv-transfer-config '{\"kv_port\": \"http\"}'", "kv_port must be a port number"),
    ("--kv-transfer-config '{\"kv_load_failure_policy\": \"pray\"}'", "kv_load_failure_policy"),
    ("--additional-config '{\"chunked_prefill_for_mla\": 1}'", "must be bool"),
    ("--additional-config '{\"enable_magic\": true}'", "unknown key 'enable_magic'"),
    ("--additional-config 'true'", "expected a JSON object"),
])
def test_json_configs_are_validated(flags, fragment):
    with pytest.raises(ServeArgumentError, match="^--") as info:
        engine_args_from_cli(parse(flags))
    assert fragment in str(info.value)


def test_all_vllm_kv_transfer_keys_are_accepted():
    config = {"kv_connector": "X", "kv_role": "kv_both", "kv_rank": 0, "kv_parallel_size": 2,
              "kv_ip": "127.0.0.1", "kv_port": 14579, "kv_buffer_device": "cpu",
              "kv_buffer_size": 1e9, "engine_id": "e0", "kv_connector_extra_config": {},
              "kv_connector_module_path": "m.n", "kv_load_failure_policy": "recompute"}
    args = parse(f"--kv-transfer-config '{json.dumps(config)}'")
    assert engine_args_from_cli(args).kv_transfer_config == config


def test_expert_parallel_on_a_dense_model_is_refused():
    args = parse("--enable-expert-parallel")
    with pytest.raises(ServeArgumentError, match="^--enable-expert-parallel: the model is dense"):
        check_expert_parallel(args, argparse.Namespace(num_hidden_layers=2))
    with pytest.raises(ServeArgumentError, match="not supported yet"):
        check_expert_parallel(args, argparse.Namespace(n_routed_experts=64))
    check_expert_parallel(parse(""), argparse.Namespace())


def test_config_errors_name_the_flag():
    assert flag_named_error(ValueError("max_model_len=9 is larger")) == "--max-model-len=9 is larger"
    assert flag_named_error(ValueError("dtype must be one of")) == "--dtype must be one of"
    assert flag_named_error(ValueError("9 heads over tensor_parallel_size=8: no")) == \
        "9 heads over --tensor-parallel-size=8: no"
    assert flag_named_error(ValueError("something else")) == "something else"


def run_serve(command_line: str) -> subprocess.CompletedProcess:
    return subprocess.run(serve_command(*shlex.split(command_line)), capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)


@pytest.mark.parametrize("command_line, named", [
    (SEED_PREFILL_P1, "--enable-expert-parallel: expert parallelism across data-parallel"),
    (SEED_DECODE_D2, "--enable-expert-parallel: expert parallelism across data-parallel"),
    ("--kv-transfer-config '{oops'", "--kv-transfer-config: malformed JSON"),
    ("--max-model-len 0", "--max-model-len must be a positive integer"),
    ("--tensor-parallel-size 8", "3 KV heads cannot be spread over --tensor-parallel-size=8"),
    ("--generation-config greedy",
     "--generation-config must be 'auto', 'vllm' or a folder holding generation_config.json"),
    ("--generation-config /", "--generation-config folder / has no generation_config.json"),
], ids=["seed-prefill-P1", "seed-decode-D2", "bad-json", "config-error", "tp-8",
        "generation-config-value", "generation-config-folder"])
def test_refusals_print_one_line_and_exit_2(command_line, named):
    result = run_serve(command_line)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


@pytest.mark.slow
def test_expert_parallel_on_the_dense_demo_model_exits_2():
    result = run_serve("--enable-expert-parallel --max-model-len 1024")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--enable-expert-parallel: the model is dense (it has no experts to distribute)")
