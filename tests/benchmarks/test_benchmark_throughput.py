"""The throughput benchmark: random prompts, flags, and a tiny end-to-end run."""
import argparse
import json
import re

import pytest

from vllm.benchmarks import throughput
from vllm.benchmarks.throughput import (BenchmarkResult, SampleRequest, add_cli_args,
                                        format_result, left_padded_batch,
                                        sample_random_requests, validate_args)

THROUGHPUT_LINE = re.compile(r"Throughput: ([\d.]+) requests/s, ([\d.]+) total tokens/s, "
                             r"([\d.]+) output tokens/s")


class FakeTokenizer:
    all_special_ids = [0, 1, 2]
    added_tokens_decoder = {0: "<pad>", 1: "<s>", 2: "</s>", 9: "<extra>"}

    def __len__(self):
        return 10


def parse(argv):
    return add_cli_args(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture(scope="module")
def demo_tokenizer():
    from vllm.demo_model import demo_model_path
    from vllm.transformers_utils.tokenizer import get_tokenizer
    try:
        path = demo_model_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return get_tokenizer(path)


def test_random_prompts_have_exact_lengths():
    requests = sample_random_requests(FakeTokenizer(), 5, 7, 3, seed=0)
    assert len(requests) == 5
    assert all(len(r.prompt_token_ids) == 7 for r in requests)
    assert all(r.expected_output_len == 3 for r in requests)


def test_random_prompts_are_seeded():
    def draw(seed):
        return [r.prompt_token_ids for r in sample_random_requests(FakeTokenizer(), 4, 20, 1,
                                                                   seed)]
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_random_prompts_avoid_special_and_added_tokens():
    requests = sample_random_requests(FakeTokenizer(), 20, 50, 1, seed=0)
    used = {t for r in requests for t in r.prompt_token_ids}
    assert used == set(range(3, 9))


def test_random_prompts_respect_model_vocab_size():
    requests = sample_random_requests(FakeTokenizer(), 10, 50, 1, seed=0, vocab_size=5)
    assert {t for r in requests for t in r.prompt_token_ids} == {3, 4}


def test_demo_tokenizer_prompts_contain_no_special_tokens(demo_tokenizer):
    requests = sample_random_requests(demo_tokenizer, 8, 64, 4, seed=3)
    special = set(demo_tokenizer.all_special_ids) | set(demo_tokenizer.added_tokens_decoder)
    assert special
    for request in requests:
        assert len(request.prompt_token_ids) == 64
        assert not special & set(request.prompt_token_ids)
        assert all(0 <= t < len(demo_tokenizer) for t in request.prompt_token_ids)


def test_default_arguments():
    args = parse([])
    assert (args.backend, args.dataset_name, args.model) == ("vllm", "random", None)
    assert (args.input_len, args.output_len, args.num_prompts) == (256, 128, 64)
    assert args.enable_prefix_caching is None and args.hf_max_batch_size == 64
    assert not args.compare_hf and not args.disable_detokenize
    assert throughput.engine_kwargs(args) == {"model": None, "dtype": "auto", "seed": 0,
                                              "trust_remote_code": False}


def test_engine_arguments_are_passed_through():
    args = parse(["--model", "m.gguf", "--tokenizer", "t", "--max-model-len", "512",
                  "--max-num-seqs", "8", "--max-num-batched-tokens", "256",
                  "--no-enable-prefix-caching", "--dtype", "float32", "--seed", "5"])
    assert throughput.engine_kwargs(args) == {
        "model": "m.gguf", "tokenizer": "t", "max_model_len": 512, "max_num_seqs": 8,
        "max_num_batched_tokens": 256, "enable_prefix_caching": False, "dtype": "float32",
        "seed": 5, "trust_remote_code": False}


def test_backend_flags():
    assert parse(["--backend", "hf", "--hf-max-batch-size", "4"]).hf_max_batch_size == 4
    assert parse(["--compare-hf"]).compare_hf
    with pytest.raises(SystemExit):
        parse(["--backend", "mii"])
    with pytest.raises(SystemExit):
        parse(["--dataset-name", "sharegpt"])


@pytest.mark.parametrize("argv", [["--input-len", "0"], ["--output-len", "0"],
                                  ["--num-prompts", "0"], ["--hf-max-batch-size", "0"],
                                  ["--max-model-len", "100", "--input-len", "90"],
                                  ["--backend", "hf", "--compare-hf"]])
def test_invalid_arguments_are_rejected(argv):
    with pytest.raises(ValueError):
        validate_args(parse(argv))


def test_format_result_prints_vllm_throughput_line():
    result = BenchmarkResult("vllm", 4, 64, 32, elapsed_s=2.0, startup_s=1.0)
    match = THROUGHPUT_LINE.search(format_result(result))
    assert match and tuple(map(float, match.groups())) == (2.0, 48.0, 16.0)


def test_wrong_output_length_fails_loudly():
    requests = [SampleRequest([5, 6], 3), SampleRequest([7, 8], 3)]
    with pytest.raises(RuntimeError, match="exactly --output-len"):
        throughput._checked_result("vllm", requests, [3, 2], 1.0, 0.0)


def test_left_padded_batch():
    input_ids, mask = left_padded_batch([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.slow
def test_end_to_end_compare_hf(tmp_path, capsys, demo_tokenizer):
    out = tmp_path / "result.json"
    args = parse(["--num-prompts", "4", "--input-len", "16", "--output-len", "8",
                  "--max-model-len", "64", "--compare-hf", "--hf-max-batch-size", "3",
                  "--output-json", str(out)])
    assert throughput.main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    printed_figures = [tuple(map(float, line)) for line in THROUGHPUT_LINE.findall(printed)]
    for figures, result in zip(printed_figures, [summary, summary["hf"]], strict=True):
        assert result["requests_per_second"] * 24 == pytest.approx(result["tokens_per_second"])
        assert result["requests_per_second"] * 8 == pytest.approx(
            result["output_tokens_per_second"])
        expected = (result["requests_per_second"], result["tokens_per_second"],
                    result["output_tokens_per_second"])
        assert figures == pytest.approx(expected, abs=0.006)
    assert printed.count("Total num prompt tokens:  64") == 2
    assert printed.count("Total num output tokens:  32") == 2
    assert "Throughput ratio (ours / HF, total tokens/s):" in printed
    assert (summary["backend"], summary["hf"]["backend"]) == ("vllm", "hf")
    assert summary["num_requests"] == 4 and summary["total_num_tokens"] == 96
    assert summary["hf"]["total_num_tokens"] == 96
    ratio = summary["tokens_per_second"] / summary["hf"]["tokens_per_second"]
    assert summary["throughput_ratio_vs_hf"] == pytest.approx(ratio)
