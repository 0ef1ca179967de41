"""Prefill/decode of a tiny DeepSeek-V3 (one dense and one MoE layer, MLA's latent cache)
through the push connector, in process: the consumer's tokens equal a colocated core's
(batch-invariant mode; near ties where the producer runs on two ranks), the moved latents
equal the producer's byte for byte, and every block comes back on both sides."""
import random
from types import SimpleNamespace

import pytest

from kvt_harness import (Collected, EngineSet, MetadataSpy, Reference, TransferCheck,
                         assert_clean, consumer_request, drive, idle, kv_config, kv_port_of,
                         plain_request, producer_request, sampling_mix, unique_id)
from near_tie import assert_equal_up_to_near_ties
from vllm.sampling_params import SamplingParams

MODEL = "v3_moe16"  # layer 0 dense, layer 1 MoE (tests/deepseek_models.py)
LENGTHS = [1, 5, 16, 17, 40, 90]
VOCAB = 500  # below the tiny model's 512

_rng = random.Random(17)


def fresh_prompts(lengths=LENGTHS) -> list[list[int]]:
    return [[_rng.randrange(3, VOCAB) for _ in range(n)] for n in lengths]


def run_pd(producer, consumer, prompts, params) -> tuple[list[str], Collected]:
    """Each prompt through producer into consumer, both sides at once."""
    ids = [unique_id("mla") for _ in prompts]
    consumed = Collected()
    for rid, prompt, sp in zip(ids, prompts, params):
        producer.add_request(producer_request(producer, rid, prompt))
        consumer.add_request(consumer_request(consumer, rid, prompt, sp, kv_port_of(producer)))
    drive({producer: Collected(), consumer: consumed}, lambda: idle(producer, consumer))
    return ids, consumed


class Setup(EngineSet):

    def build(self, folder: str, tokenizer: str):
        model = dict(model=folder, tokenizer=tokenizer)
        self.producer = self.core(kv_config("kv_producer"), **model)
        self.consumer = self.core(kv_config("kv_consumer"), **model)
        self.colocated = self.core(**model)
        self.reference = Reference(self.colocated)
        self.spies = {core: MetadataSpy(core) for core in (self.producer, self.consumer)}
        self.check = TransferCheck(self.consumer, self.spies[self.consumer],
                                   [(self.producer, self.spies[self.producer])])

    def run(self, prompts, params) -> tuple[list[str], Collected]:
        return run_pd(self.producer, self.consumer, prompts, params)


@pytest.fixture(scope="module")
def pd(tiny_deepseek, demo_model_dir):
    with Setup.running(tiny_deepseek(MODEL), demo_model_dir) as setup:
        yield setup


@pytest.fixture
def fresh(pd):
    for spy in pd.spies.values():
        spy.clear()
    pd.check.clear()
    yield pd
    assert_clean(*pd.cores)


def test_latent_moves_whole_and_tokens_equal_colocated(fresh):
    prompts = fresh_prompts()
    params = sampling_mix(len(prompts))
    ids, consumed = fresh.run(prompts, params)
    assert [consumed.tokens[rid] for rid in ids] == fresh.reference.tokens(prompts, params)
    assert fresh.check.problems == []
    for rid, prompt in zip(ids, prompts):
        if len(prompt) > 1:  # the consumer computed only the last prompt token
            assert fresh.check.checked[rid] == (0, len(prompt) - 1), rid
            assert consumed.num_cached[rid] == len(prompt) - 1, rid


def test_prefix_hits_on_both_sides_move_only_the_rest(fresh):
    """A second wave extends the first wave's prompts: the consumer asks only for the blocks
    it does not cache; the producer, which caches the same blocks, computes and streams
    only the rest."""
    first = fresh_prompts([40, 70])
    fresh.run(first, sampling_mix(2))
    prompts = [prompt + [_rng.randrange(3, VOCAB) for _ in range(30)] for prompt in first]
    params = sampling_mix(2)
    fresh.check.clear()
    ids, consumed = fresh.run(prompts, params)
    assert [consumed.tokens[rid] for rid in ids] == fresh.reference.tokens(prompts, params)
    assert fresh.check.problems == []
    for rid, old, new in zip(ids, first, prompts):
        cached = len(old) // 16 * 16  # the first wave's full blocks
        assert fresh.check.checked[rid] == (cached, len(new) - 1), rid
        assert consumed.num_cached[rid] == len(new) - 1


def test_preempted_consumer_recomputes_and_frees(pd, tiny_deepseek, demo_model_dir):
    """A consumer with room for few blocks preempts running requests while they decode:
    they recompute locally, give the same tokens, and every block comes back."""
    with SmallConsumer.running(tiny_deepseek(MODEL), demo_model_dir) as small:
        prompts = fresh_prompts([40, 45, 50, 55])
        params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] * 4
        ids, consumed = run_pd(pd.producer, small.consumer, prompts, params)
        assert [consumed.tokens[rid] for rid in ids] == pd.reference.tokens(prompts, params)
        assert small.consumer.scheduler.num_preemptions > 0
        assert_clean(pd.producer, small.consumer)


class SmallConsumer(EngineSet):

    def build(self, folder: str, tokenizer: str):
        self.consumer = self.core(kv_config("kv_consumer"), model=folder, tokenizer=tokenizer,
                                  num_gpu_blocks_override=14, max_model_len=128)


def as_completion(consumed: Collected, rid: str) -> SimpleNamespace:
    """The near-tie rule's view of a request's tokens and per-step logprobs."""
    steps = [dict(zip(token_ids, logprobs))
             for out in consumed.outputs[rid]
             for token_ids, logprobs, _ in (out.new_logprobs or [])]
    return SimpleNamespace(token_ids=consumed.tokens[rid], logprobs=[
        {token: SimpleNamespace(logprob=value) for token, value in step.items()}
        for step in steps])


class TwoRankProducer(EngineSet):

    def build(self, folder: str, tokenizer: str):
        self.producer = self.core(kv_config("kv_producer"), model=folder, tokenizer=tokenizer,
                                  tensor_parallel_size=2)
        self.consumer = self.core(kv_config("kv_consumer"), model=folder, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tp2_into_tp1(tiny_deepseek, demo_model_dir):
    with TwoRankProducer.running(tiny_deepseek(MODEL), demo_model_dir) as setup:
        yield setup


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=8, logprobs=2, ignore_eos=True),
    SamplingParams(temperature=0.9, seed=11, max_tokens=8, logprobs=2, ignore_eos=True)],
    ids=["greedy", "seeded"])
def test_two_producer_ranks_into_one_consumer_rank(pd, tp2_into_tp1, params):
    """Producer rank 0 sends the whole latent; rank 1, which holds the same, sends nothing.
    TP=2 sums in another order than TP=1: equal up to near ties (tests/near_tie.py)."""
    prompts = fresh_prompts([5, 17, 40, 90])
    ids, consumed = run_pd(tp2_into_tp1.producer, tp2_into_tp1.consumer, prompts,
                           [params] * len(prompts))
    want = Collected()
    colocated = pd.colocated
    for rid, prompt in zip(ids, prompts):
        colocated.add_request(plain_request(colocated, rid, prompt, params))
    drive({colocated: want}, lambda: not colocated.has_unfinished_requests())
    assert_equal_up_to_near_ties([as_completion(consumed, rid) for rid in ids],
                                 [as_completion(want, rid) for rid in ids], params)
    for rid in ids[1:]:
        assert consumed.num_cached[rid] > 0, rid  # the KV came from the producer
    assert_clean(*tp2_into_tp1.cores, colocated)
