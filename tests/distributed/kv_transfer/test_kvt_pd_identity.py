"""Prefill on one EngineCore, decode on another, in one process: the consumer's tokens equal
a colocated EngineCore's, the moved KV equals the producer's byte for byte, and every
block comes back on both sides, whatever the order the two halves of a request arrive in."""
import pytest

from kvt_harness import (Collected, EngineSet, MessageSpy, MetadataSpy, PromptMaker,
                         Reference, TransferCheck, assert_clean, consumer_request, drive, idle,
                         kv_config, kv_port_of, plain_request, producer_request, sampling_mix,
                         step_all, unique_id)
from vllm.distributed.kv_transfer.messages import ConsumerReady, TransferAbort
from vllm.sampling_params import SamplingParams
from vllm.transformers_utils.tokenizer import get_tokenizer

pytestmark = pytest.mark.identity

# 1 token (nothing to move), under a block, a block and one, several blocks, ~300 tokens.
LENGTHS = [1, 5, 16, 17, 33, 70, 150, 300]


class Setup(EngineSet):

    def build(self):
        self.producer = self.core(kv_config("kv_producer"))
        self.chunked = self.core(kv_config("kv_producer"), max_num_batched_tokens=32)
        self.consumer = self.core(kv_config("kv_consumer"))
        self.colocated = self.core()
        self.reference = Reference(self.colocated)
        self.spies = {core: MetadataSpy(core)
                      for core in (self.producer, self.chunked, self.consumer)}
        self.messages = MessageSpy(self.consumer)
        self.check = TransferCheck(self.consumer, self.spies[self.consumer],
                                   [(self.producer, self.spies[self.producer]),
                                    (self.chunked, self.spies[self.chunked])])
        tokenizer = get_tokenizer(self.colocated.vllm_config.model_config.tokenizer)
        self.prompts = PromptMaker(tokenizer)


@pytest.fixture(scope="module")
def pd():
    setup = Setup()
    try:
        yield setup
    finally:
        setup.shutdown()


@pytest.fixture
def fresh(pd):
    """Each test starts with no recorded jobs or problems and ends with nothing leaked."""
    for spy in pd.spies.values():
        spy.clear()
    pd.check.clear()
    pd.messages.sent.clear()
    yield pd
    assert_clean(*pd.cores)


class Batch:
    """One PD batch: same request ids on both sides, fresh prompts."""

    def __init__(self, pd: Setup, lengths=LENGTHS, max_tokens: int = 8, prompts=None):
        self.pd = pd
        self.prompts = prompts or [pd.prompts.make(n, offset=3 * i)
                                   for i, n in enumerate(lengths)]
        self.ids = [unique_id("pd") for _ in self.prompts]
        self.params = sampling_mix(len(self.prompts), max_tokens)
        self.produced = Collected()
        self.consumed = Collected()

    def producer_requests(self, producer):
        return [producer_request(producer, rid, prompt)
                for rid, prompt in zip(self.ids, self.prompts)]

    def consumer_requests(self, producer, remote: bool = False):
        consumer = self.pd.consumer
        return [consumer_request(consumer, rid, prompt, params, kv_port_of(producer),
                                 remote=self.produced.kv_params[rid] if remote else None)
                for rid, prompt, params in zip(self.ids, self.prompts, self.params)]

    def transferred(self) -> set[str]:
        return {rid for rid, prompt in zip(self.ids, self.prompts) if len(prompt) > 1}

    def park_consumer_first(self, producer) -> None:
        """Add the consumer's requests and step both engines until the producer holds every
        ConsumerReady of requests it does not know yet."""
        for request in self.consumer_requests(producer):
            self.pd.consumer.add_request(request)
        engines = {producer: self.produced, self.pd.consumer: self.consumed}
        for _ in range(3):
            step_all(engines)
        drive(engines, lambda: self.transferred() <= set(producer.connector._early_ready))

    def drive_both(self, producer) -> None:
        drive({producer: self.produced, self.pd.consumer: self.consumed},
              lambda: idle(producer, self.pd.consumer))

    def check_tokens(self) -> None:
        expected = self.pd.reference.tokens(self.prompts, self.params)
        got = [self.consumed.tokens[rid] for rid in self.ids]
        for rid, prompt, want, have in zip(self.ids, self.prompts, expected, got):
            assert have == want, f"{rid} ({len(prompt)} prompt tokens)"
            assert self.consumed.finish[rid] in ("stop", "length")
        assert all(len(tokens) >= 1 for tokens in got)

    def check_transfers(self) -> None:
        """Every prompt of two tokens or more moved [0, len - 1) intact."""
        pd = self.pd
        assert pd.check.problems == []
        for rid, prompt in zip(self.ids, self.prompts):
            if len(prompt) > 1:
                assert pd.check.checked.get(rid) == (0, len(prompt) - 1), rid
                # The consumer computed only the last prompt token.
                assert self.consumed.num_cached[rid] == len(prompt) - 1, rid
            else:
                assert rid not in pd.check.checked


def test_together(fresh):
    batch = Batch(fresh)
    for request in batch.producer_requests(fresh.producer):
        fresh.producer.add_request(request)
    for request in batch.consumer_requests(fresh.producer):
        fresh.consumer.add_request(request)
    batch.drive_both(fresh.producer)
    batch.check_tokens()
    batch.check_transfers()
    # The producer computed the whole prompt and says where its KV is.
    for rid in batch.ids:
        assert batch.produced.tokens[rid], rid
        params = batch.produced.kv_params[rid]
        assert params["do_remote_prefill"] is True
        assert params["remote_port"] == kv_port_of(fresh.producer)


def test_chunked_producer_streams_its_prefill(fresh):
    """Prefill in 32-token chunks: each step's new KV is streamed layer by layer."""
    batch = Batch(fresh)
    batch.park_consumer_first(fresh.chunked)
    for request in batch.producer_requests(fresh.chunked):
        fresh.chunked.add_request(request)
    batch.drive_both(fresh.chunked)
    batch.check_tokens()
    batch.check_transfers()
    sends = fresh.spies[fresh.chunked]
    longest = batch.ids[-1]
    streamed = [job for job in sends.sends_of(longest) if job.streamed]
    assert len(streamed) >= 300 // 32 - 1, [(j.token_start, j.token_end, j.streamed)
                                             for j in sends.sends_of(longest)]
    assert all(job.token_end - job.token_start <= 32 for job in streamed)


def test_consumer_first(fresh):
    """The consumer's requests park several steps before the producer hears of them."""
    batch = Batch(fresh)
    batch.park_consumer_first(fresh.producer)
    assert set(fresh.consumer.scheduler.waiting_for_remote) == batch.transferred()
    assert set(fresh.producer.connector._early_ready) == batch.transferred()
    for request in batch.producer_requests(fresh.producer):
        fresh.producer.add_request(request)
    batch.drive_both(fresh.producer)
    batch.check_tokens()
    batch.check_transfers()


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_producer_first_sends_from_held_blocks(fresh, chunked):
    """The producer finishes and holds its blocks before the consumer's requests exist;
    the consumer uses the kv_transfer_params of the producer's response."""
    producer = fresh.chunked if chunked else fresh.producer
    batch = Batch(fresh)
    for request in batch.producer_requests(producer):
        producer.add_request(request)
    drive({producer: batch.produced}, lambda: not producer.has_unfinished_requests())
    assert set(producer.scheduler.held) == set(batch.ids)
    assert producer.kv_cache_manager.get_num_free_blocks() < producer.kv_cache_manager.num_blocks
    for request in batch.consumer_requests(producer, remote=True):
        fresh.consumer.add_request(request)
    batch.drive_both(producer)
    batch.check_tokens()
    batch.check_transfers()
    assert not any(job.streamed for job in fresh.spies[producer].sends)


def test_producer_prefix_hit_sends_cached_part_then_streams(fresh):
    """The producer already holds the first blocks in its prefix cache: those go from the
    cache, the rest is streamed as it is computed."""
    batch = Batch(fresh, lengths=[70, 150], max_tokens=6)
    warm = Collected()
    for prompt in batch.prompts:
        fresh.producer.add_request(plain_request(
            fresh.producer, unique_id("warm"), prompt[:48], SamplingParams(max_tokens=1)))
    drive({fresh.producer: warm}, lambda: not fresh.producer.has_unfinished_requests())
    batch.park_consumer_first(fresh.producer)
    for request in batch.producer_requests(fresh.producer):
        fresh.producer.add_request(request)
    batch.drive_both(fresh.producer)
    batch.check_tokens()
    batch.check_transfers()
    for rid, prompt in zip(batch.ids, batch.prompts):
        spans = [(job.token_start, job.token_end, job.streamed)
                 for job in fresh.spies[fresh.producer].sends_of(rid)]
        assert spans == [(0, 48, False), (48, len(prompt) - 1, True)], spans


def test_consumer_prefix_hit_moves_only_the_rest(fresh):
    """Blocks the consumer already caches are not asked for again."""
    consumer = fresh.consumer
    shared = fresh.prompts.make(40)
    local = Collected()
    consumer.add_request(plain_request(consumer, unique_id("local"), shared,
                                       SamplingParams(temperature=0, max_tokens=2)))
    drive({consumer: local}, lambda: not consumer.has_unfinished_requests())
    # 96 tokens whose first 2 blocks the consumer caches (the third differs from token 36).
    batch = Batch(fresh, prompts=[shared[:36] + fresh.prompts.body[200:260]])
    for request in batch.producer_requests(fresh.producer):
        fresh.producer.add_request(request)
    for request in batch.consumer_requests(fresh.producer):
        consumer.add_request(request)
    batch.drive_both(fresh.producer)
    batch.check_tokens()
    rid, prompt = batch.ids[0], batch.prompts[0]
    readies = fresh.messages.of_type(ConsumerReady)
    assert [(r.key, r.token_start, r.token_end) for r in readies] == \
        [(rid, 32, len(prompt) - 1)]
    assert fresh.check.problems == []
    assert fresh.check.checked == {rid: (32, len(prompt) - 1)}
    spans = [(job.token_start, job.token_end)
             for job in fresh.spies[fresh.producer].sends_of(rid)]
    assert spans[0][0] == 32 and spans[-1][1] == len(prompt) - 1
    assert batch.consumed.num_cached[rid] == len(prompt) - 1


def test_consumer_holds_whole_prompt_nothing_is_moved(fresh):
    """Every full block but the last token is cached on the consumer: it computes locally
    and tells the producer, whose held blocks are freed at once."""
    consumer = fresh.consumer
    prompt = fresh.prompts.make(33)
    local = Collected()
    consumer.add_request(plain_request(consumer, unique_id("local"), prompt,
                                       SamplingParams(temperature=0, max_tokens=2)))
    drive({consumer: local}, lambda: not consumer.has_unfinished_requests())
    batch = Batch(fresh, prompts=[prompt])
    for request in batch.producer_requests(fresh.producer):
        fresh.producer.add_request(request)
    drive({fresh.producer: batch.produced},
          lambda: not fresh.producer.has_unfinished_requests())
    assert list(fresh.producer.scheduler.held) == batch.ids
    for request in batch.consumer_requests(fresh.producer, remote=True):
        consumer.add_request(request)
    batch.drive_both(fresh.producer)
    batch.check_tokens()
    assert fresh.messages.of_type(ConsumerReady) == []
    assert [(m.key, m.reason) for m in fresh.messages.of_type(TransferAbort)] == \
        [(batch.ids[0], "not needed")]
    assert fresh.spies[fresh.producer].sends == []
    assert batch.consumed.num_cached[batch.ids[0]] == 32
