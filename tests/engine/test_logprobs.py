import math
from types import SimpleNamespace

import pytest
import torch

from vllm.engine.logprobs import LogprobsProcessor, make_logprob_dict
from vllm.outputs import CompletionOutput, Logprob, RequestOutput


@pytest.fixture(scope="module")
def hello_ids(tokenizer):
    return tokenizer.encode("Hello world today")


def test_sampled_token_outside_top_k_gives_k_plus_one_entries(tokenizer, hello_ids):
    sampled, top1, top2 = hello_ids
    entry = make_logprob_dict([sampled, top1, top2], [-3.0, -0.5, -1.0], 7, tokenizer)
    assert list(entry) == [sampled, top1, top2]
    assert entry[sampled] == Logprob(-3.0, 7, "Hello")
    assert entry[top1] == Logprob(-0.5, 1, " world")
    assert entry[top2] == Logprob(-1.0, 2, " today")


def test_sampled_token_inside_top_k_appears_once(tokenizer, hello_ids):
    sampled, other, _ = hello_ids
    entry = make_logprob_dict([sampled, other, sampled], [-0.7, -0.2, -0.7], 2, tokenizer)
    assert len(entry) == 2
    assert entry[sampled].rank == 2
    assert entry[other].rank == 1


def test_processor_accumulates_cumulative_logprob(tokenizer, hello_ids):
    processor = LogprobsProcessor(tokenizer, num_logprobs=1)
    processor.update([hello_ids[0], hello_ids[0]], [-0.25, -0.25], 1)
    processor.update(torch.tensor([hello_ids[1], hello_ids[2]]), torch.tensor([-1.5, -0.5]), 3)
    assert len(processor.logprobs) == 2
    assert len(processor.logprobs[0]) == 1
    assert processor.logprobs[1][hello_ids[1]] == Logprob(-1.5, 3, " world")
    assert math.isclose(processor.cumulative_logprob, -1.75)


def test_processor_with_zero_logprobs_keeps_sampled_token(tokenizer, hello_ids):
    processor = LogprobsProcessor(tokenizer, num_logprobs=0)
    processor.update([hello_ids[2]], [-2.0], 5)
    assert processor.logprobs == [{hello_ids[2]: Logprob(-2.0, 5, " today")}]
    assert processor.cumulative_logprob == -2.0


def test_processor_without_logprobs_stays_none(tokenizer, hello_ids):
    processor = LogprobsProcessor.from_params(tokenizer, SimpleNamespace())
    processor.update([hello_ids[0]], [-1.0], 1)
    processor.update_prompt([hello_ids[0]], [-1.0], 1)
    assert processor.logprobs is None
    assert processor.cumulative_logprob is None
    assert processor.prompt_logprobs is None


def test_prompt_logprobs_start_with_none(tokenizer, hello_ids):
    params = SimpleNamespace(logprobs=None, prompt_logprobs=1)
    processor = LogprobsProcessor.from_params(tokenizer, params)
    processor.update_prompt([hello_ids[1], hello_ids[0]], [-4.0, -0.1], 9)
    assert processor.prompt_logprobs == [
        None,
        {hello_ids[1]: Logprob(-4.0, 9, " world"), hello_ids[0]: Logprob(-0.1, 1, "Hello")},
    ]


def test_special_token_decoded_text(tokenizer):
    entry = make_logprob_dict([tokenizer.eos_token_id], [-0.1], 1, tokenizer)
    assert entry[tokenizer.eos_token_id].decoded_token == "<|im_end|>"


def test_no_tokenizer_leaves_decoded_token_empty():
    assert make_logprob_dict([5], [-0.1], 1) == {5: Logprob(-0.1, 1, None)}


def test_completion_and_request_output():
    completion = CompletionOutput(0, "Hi", [1, 2], None, None)
    assert not completion.finished()
    completion.finish_reason, completion.stop_reason = "stop", "!"
    assert completion.finished()
    output = RequestOutput("req-1", "Say hi", [7, 8], None, [completion], finished=True)
    text = repr(output)
    assert text.startswith("RequestOutput(request_id=req-1, prompt='Say hi'")
    assert "CompletionOutput(index=0, text='Hi'" in text
    assert "finish_reason=stop, stop_reason=!" in text
    assert output.num_cached_tokens is None and output.metrics is None
