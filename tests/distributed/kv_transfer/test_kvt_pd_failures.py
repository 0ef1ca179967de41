"""When the KV does not come: recompute or fail by policy, aborts on either side, and the
producer's lease on blocks nobody collects."""
import time

import pytest

from kvt_harness import (Collected, EngineSet, MessageSpy, MetadataSpy, PromptMaker,
                         Reference, assert_clean, consumer_request, dead_port, drive, idle,
                         kv_config, kv_port_of, producer_request, sampling_mix, step_all,
                         step_for, unique_id)
from vllm.distributed.kv_transfer.messages import ConsumerReady, TransferAbort
from vllm.transformers_utils.tokenizer import get_tokenizer

WAIT_S = 1  # the consumers' kv_wait_timeout_s
LENGTHS = [5, 40, 150]


class Setup(EngineSet):

    def build(self):
        self.holder, self.dead_port = dead_port()
        waiting = {"kv_wait_timeout_s": WAIT_S}
        self.producer = self.core(kv_config("kv_producer"))
        self.leased = self.core(kv_config("kv_producer", extra={"kv_lease_s": 1}))
        self.recompute = self.core(kv_config("kv_consumer", extra=waiting))
        self.fail = self.core(kv_config("kv_consumer", extra=waiting,
                                        kv_load_failure_policy="fail"))
        self.colocated = self.core()
        self.reference = Reference(self.colocated)
        self.producer_spy = MetadataSpy(self.producer)
        self.producer_messages = MessageSpy(self.producer)
        tokenizer = get_tokenizer(self.colocated.vllm_config.model_config.tokenizer)
        self.prompts = PromptMaker(tokenizer)

    def shutdown(self):
        super().shutdown()
        if hasattr(self, "holder"):
            self.holder.close()


@pytest.fixture(scope="module")
def pd():
    setup = Setup()
    try:
        yield setup
    finally:
        setup.shutdown()


@pytest.fixture
def fresh(pd):
    pd.producer_spy.clear()
    pd.producer_messages.sent.clear()
    yield pd
    assert_clean(*pd.cores, tombstones_ok=True)


def test_no_producer_recompute(fresh):
    """Nobody listens at the producer's address: after kv_wait_timeout_s the consumer
    computes the prompts itself and its tokens are still the colocated ones."""
    consumer = fresh.recompute
    prompts = [fresh.prompts.make(n) for n in LENGTHS]
    params = sampling_mix(len(prompts))
    ids = [unique_id("dead") for _ in prompts]
    out = Collected()
    for rid, prompt, sp in zip(ids, prompts, params):
        consumer.add_request(consumer_request(consumer, rid, prompt, sp, fresh.dead_port))
    step_all({consumer: out})
    assert set(consumer.scheduler.waiting_for_remote) == set(ids)
    assert not consumer.has_work()  # parked requests need no steps
    took = drive({consumer: out}, lambda: not consumer.has_unfinished_requests())
    assert took >= WAIT_S * 0.9
    assert [out.tokens[rid] for rid in ids] == fresh.reference.tokens(prompts, params)
    for rid in ids:
        assert out.num_cached[rid] == 0, "no remote tokens may count as cached"
        assert out.finish[rid] in ("stop", "length")
    assert consumer.take_failed() == {}


def test_no_producer_fail_policy(fresh):
    """kv_load_failure_policy 'fail': the request ends with finish_reason 'abort' and
    EngineCore.take_failed() says why, once."""
    consumer = fresh.fail
    ids = [unique_id("fail") for _ in LENGTHS]
    out = Collected()
    params = sampling_mix(len(ids))
    for rid, n, sp in zip(ids, LENGTHS, params):
        consumer.add_request(consumer_request(consumer, rid, fresh.prompts.make(n), sp,
                                              fresh.dead_port))
    drive({consumer: out}, lambda: set(out.finish) == set(ids))
    assert {rid: out.finish[rid] for rid in ids} == {rid: "abort" for rid in ids}
    assert all(out.tokens[rid] == [] for rid in ids)
    failed = consumer.take_failed()
    assert set(failed) == set(ids)
    for reason in failed.values():
        assert "KV transfer failed" in reason and f"within {WAIT_S} s" in reason, reason
    assert consumer.take_failed() == {}
    assert not consumer.has_unfinished_requests()


def test_producer_abort_fails_waiting_consumer(fresh):
    """The producer aborts a request whose consumer is already waiting: the consumer is
    told at once (well before its own timeout) and fails it with the producer's reason."""
    consumer, producer = fresh.fail, fresh.producer
    rid = unique_id("p-abort")
    prompt = fresh.prompts.make(300)
    out, produced = Collected(), Collected()
    engines = {producer: produced, consumer: out}
    consumer.add_request(consumer_request(consumer, rid, prompt, sampling_mix(1)[0],
                                          kv_port_of(producer)))
    drive(engines, lambda: rid in producer.connector._early_ready)
    producer.add_request(producer_request(producer, rid, prompt))
    producer.abort_requests([rid])
    start = time.monotonic()
    drive(engines, lambda: rid in out.finish and idle(producer, consumer))
    assert time.monotonic() - start < WAIT_S * 0.8, "the consumer only gave up by timeout"
    assert out.finish[rid] == "abort"
    failed = consumer.take_failed()
    assert "producer aborted" in failed[rid], failed
    assert rid not in producer.connector._early_ready
    # A consumer asking after the abort is refused at once as well.
    late, late_out = unique_id("p-abort-late"), Collected()
    producer.add_request(producer_request(producer, late, prompt))
    producer.abort_requests([late])
    consumer.add_request(consumer_request(consumer, late, prompt, sampling_mix(1)[0],
                                          kv_port_of(producer)))
    start = time.monotonic()
    drive({producer: produced, consumer: late_out}, lambda: late in late_out.finish)
    assert time.monotonic() - start < WAIT_S * 0.8, "the late consumer only gave up by timeout"
    assert "producer aborted" in consumer.take_failed()[late]


def test_consumer_abort_frees_producer_blocks(fresh):
    """The consumer's waiting request is aborted: the producer hears TransferAbort, frees
    the blocks it holds for it, and sends nothing."""
    consumer, producer = fresh.recompute, fresh.producer
    ids = [unique_id("c-abort") for _ in LENGTHS]
    prompts = [fresh.prompts.make(n) for n in LENGTHS]
    produced, out = Collected(), Collected()
    for rid, prompt in zip(ids, prompts):
        producer.add_request(producer_request(producer, rid, prompt))
    drive({producer: produced}, lambda: not producer.has_unfinished_requests())
    assert set(producer.scheduler.held) == set(ids)
    manager = producer.kv_cache_manager
    assert manager.get_num_free_blocks() < manager.num_blocks
    messages = MessageSpy(consumer)
    for rid, prompt, sp in zip(ids, prompts, sampling_mix(len(ids))):
        consumer.add_request(consumer_request(consumer, rid, prompt, sp,
                                              remote=produced.kv_params[rid]))
    step_all({consumer: out})
    assert set(consumer.scheduler.waiting_for_remote) == set(ids)
    consumer.abort_requests(ids)
    assert not consumer.scheduler.waiting_for_remote
    assert [m.key for m in messages.of_type(ConsumerReady)] == ids
    assert sorted(m.key for m in messages.of_type(TransferAbort)) == sorted(ids)
    time.sleep(0.2)  # both messages reach the producer before it next looks
    drive({producer: produced, consumer: out}, lambda: idle(producer, consumer))
    assert manager.get_num_free_blocks() == manager.num_blocks
    assert fresh.producer_spy.sends == [], "KV was sent for aborted transfers"
    assert all(rid not in out.tokens for rid in ids)


def test_consumer_abort_before_producer_knows(fresh):
    """The consumer gives up before the producer has the request: when the request does
    reach the producer it is aborted there, and nothing is left behind."""
    consumer, producer = fresh.recompute, fresh.producer
    rid = unique_id("c-abort-early")
    prompt = fresh.prompts.make(40)
    produced, out = Collected(), Collected()
    engines = {producer: produced, consumer: out}
    consumer.add_request(consumer_request(consumer, rid, prompt, sampling_mix(1)[0],
                                          kv_port_of(producer)))
    drive(engines, lambda: rid in producer.connector._early_ready)
    consumer.abort_requests([rid])
    drive(engines, lambda: rid in producer.connector._tombstones)
    assert rid not in producer.connector._early_ready
    producer.add_request(producer_request(producer, rid, prompt))
    drive(engines, lambda: idle(producer, consumer) and not producer.scheduler.has_work())
    # Aborted when it arrives (a short prompt may finish its only step first); either
    # way it neither holds blocks nor offers KV to anyone.
    assert produced.finish.get(rid) in ("abort", "length")
    assert produced.kv_params.get(rid) is None
    assert fresh.producer_spy.sends == []


def test_lease_releases_uncollected_blocks(fresh):
    """No consumer ever comes: after kv_lease_s the producer frees what it held."""
    producer = fresh.leased
    manager = producer.kv_cache_manager
    ids = [unique_id("lease") for _ in LENGTHS]
    produced = Collected()
    for rid, n in zip(ids, LENGTHS):
        producer.add_request(producer_request(producer, rid, fresh.prompts.make(n)))
    drive({producer: produced}, lambda: not producer.has_unfinished_requests())
    finished_at = time.monotonic()
    assert set(producer.scheduler.held) == set(ids)
    held_blocks = manager.num_blocks - manager.get_num_free_blocks()
    assert held_blocks >= sum(-(-n // 16) for n in LENGTHS)
    step_for({producer: produced}, 0.5)
    if time.monotonic() - finished_at < 0.9:
        assert set(producer.scheduler.held) == set(ids), "released before the lease ran out"
    step_for({producer: produced}, 1.0)
    assert producer.scheduler.held == {}
    assert manager.get_num_free_blocks() == manager.num_blocks
    assert set(produced.finish) == set(ids)  # one output each, nothing more
