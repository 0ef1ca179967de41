"""A producer that goes away while consumers wait on it: every waiting request gets the
failure policy within about kv_peer_timeout_s, never kv_wait_timeout_s; a producer
restarted on the same address is used again; another producer's transfers go on."""
import threading
import time

import pytest

from kvt_harness import (Collected, EngineSet, PromptMaker, Reference, assert_clean,
                         connector_worker, consumer_request, dead_port, drive, kv_config,
                         kv_port_of, make_core, producer_request, sampling_mix, unique_id)
from vllm.distributed.kv_transfer.messages import ProducerAccept
from vllm.transformers_utils.tokenizer import get_tokenizer

WAIT_S = 60  # kv_wait_timeout_s: never reached by any test here
PEER_S = 1.0  # kv_peer_timeout_s
NOTICE_S = 3.0  # the slowest a consumer may be to give up on a dead producer
DRIVE_S = 15  # well below WAIT_S: the old behaviour fails by timing out here
LENGTHS = [3, 9, 17]  # short: recomputing them is quick, even on a busy host


class Setup(EngineSet):

    def build(self):
        self.holder, self.dead_port = dead_port()
        extra = {"kv_wait_timeout_s": WAIT_S, "kv_peer_timeout_s": PEER_S}
        self.recompute = self.core(kv_config("kv_consumer", extra=extra))
        self.fail = self.core(kv_config("kv_consumer", extra=extra,
                                        kv_load_failure_policy="fail"))
        self.survivor = self.core(kv_config("kv_producer"))
        self.reference = Reference(self.core())
        tokenizer = get_tokenizer(self.recompute.vllm_config.model_config.tokenizer)
        self.prompts = PromptMaker(tokenizer)

    def shutdown(self):
        super().shutdown()
        if hasattr(self, "holder"):
            self.holder.close()


@pytest.fixture(scope="module")
def pd():
    setup = Setup()
    yield setup
    setup.shutdown()


@pytest.fixture
def victim(pd):
    """Producers a test kills itself; make(port) makes one on a dead one's address."""
    cores = []

    def make(port=None):
        cores.append(make_core(kv_config("kv_producer", port=port)))
        return cores[-1]

    yield make
    for core in cores:
        if not getattr(core, "dead", False):
            core.shutdown()
    assert_clean(pd.recompute, pd.fail, pd.survivor, tombstones_ok=True)


def kill(core) -> float:
    """What a SIGKILL does to the control plane: the producer's sockets close."""
    core.shutdown()
    core.dead = True
    return time.monotonic()


def orphans(pd, consumer, producer_port: int, prompts=None) -> list[str]:
    """Requests whose producer never gets them: they wait until it is found gone."""
    prompts = prompts or [pd.prompts.make(n) for n in LENGTHS]
    ids = [unique_id("orphan") for _ in prompts]
    for rid, prompt, sp in zip(ids, prompts, sampling_mix(len(prompts))):
        consumer.add_request(consumer_request(consumer, rid, prompt, sp, producer_port))
    return ids


def paired(pd, producer, consumer, length: int) -> tuple[str, list]:
    rid, prompt = unique_id("paired"), pd.prompts.make(length)
    producer.add_request(producer_request(producer, rid, prompt))
    consumer.add_request(consumer_request(consumer, rid, prompt, sampling_mix(1)[0],
                                          kv_port_of(producer)))
    return rid, prompt


def asked(producer, ids) -> bool:
    return set(ids) <= set(producer.connector._early_ready)


class GiveUpTimes:
    """When each consumer's scheduler applied the failure policy to each request (the
    harness steps engines in turn, so when a request finishes also depends on how long
    the other engines' steps took)."""

    def __init__(self, *consumers):
        self.at: dict[str, float] = {}
        for consumer in consumers:
            self._spy(consumer.scheduler)

    def _spy(self, scheduler) -> None:
        original = scheduler._remote_kv_failed

        def failed(request_id, reason):
            self.at.setdefault(request_id, time.monotonic())
            return original(request_id, reason)

        scheduler._remote_kv_failed = failed

    def since(self, start: float, ids) -> list[float]:
        return [round(self.at[rid] - start, 3) for rid in ids]


def test_killed_producer_fails_every_waiting_request_at_once(pd, victim):
    """Requests parked on the producer when it dies leave the wait within NOTICE_S, to be
    recomputed (the colocated tokens) or failed with the reason; the survivor's transfer
    goes on."""
    producer = victim()
    re_out, fail_out, produced = Collected(), Collected(), Collected()
    engines = {pd.fail: fail_out, pd.recompute: re_out, pd.survivor: produced,
               producer: Collected()}
    prompts = [pd.prompts.make(n) for n in LENGTHS]
    re_ids = orphans(pd, pd.recompute, kv_port_of(producer), prompts)
    fail_ids = orphans(pd, pd.fail, kv_port_of(producer), prompts)
    drive(engines, lambda: asked(producer, re_ids + fail_ids))
    kept, kept_prompt = paired(pd, pd.survivor, pd.recompute, 40)
    gave_up = GiveUpTimes(pd.recompute, pd.fail)
    killed = kill(producer)
    del engines[producer]
    drive(engines, lambda: set(re_ids + fail_ids) <= set(gave_up.at), timeout_s=DRIVE_S)
    took = gave_up.since(killed, re_ids + fail_ids)
    print(f"kill -> failure policy applied: {took} s")
    assert max(took) < NOTICE_S, f"policy applied {took} s after the kill"
    drive(engines, lambda: set(re_ids + [kept]) <= set(re_out.finish) and
          set(fail_ids) <= set(fail_out.finish) and not pd.survivor.scheduler.held,
          timeout_s=DRIVE_S)
    params = sampling_mix(len(LENGTHS))
    assert [re_out.tokens[r] for r in re_ids] == pd.reference.tokens(prompts, params)
    assert all(re_out.num_cached[rid] == 0 for rid in re_ids)
    assert {fail_out.finish[rid] for rid in fail_ids} == {"abort"}
    failed = pd.fail.take_failed()
    assert set(failed) == set(fail_ids)
    assert all("prefill instance is gone" in reason for reason in failed.values()), failed
    assert re_out.num_cached[kept] == len(kept_prompt) - 1, "the survivor's KV did not come"
    assert re_out.tokens[kept] == pd.reference.tokens([kept_prompt], sampling_mix(1))[0]


def test_unreachable_producer_fails_after_the_peer_timeout(pd):
    """Nobody ever listens at the producer's address: kv_peer_timeout_s, not
    kv_wait_timeout_s, decides."""
    out = Collected()
    ids = orphans(pd, pd.fail, pd.dead_port)
    took = drive({pd.fail: out}, lambda: set(ids) <= set(out.finish), timeout_s=DRIVE_S)
    assert PEER_S * 0.9 <= took < NOTICE_S, took
    failed = pd.fail.take_failed()
    assert all(f"not reachable for {PEER_S:g} s" in failed[rid] for rid in ids), failed
    assert_clean(pd.fail, tombstones_ok=True)


def test_restarted_producer_is_used_again(pd, victim):
    """A new producer process on the dead one's address (new nonce) sends KV again."""
    producer = victim()
    port = kv_port_of(producer)
    produced, out = Collected(), Collected()
    first, _ = paired(pd, producer, pd.recompute, 70)
    drive({producer: produced, pd.recompute: out}, lambda: first in out.finish)
    drive({producer: produced, pd.recompute: out}, lambda: not producer.scheduler.held)
    kill(producer)
    waiting = orphans(pd, pd.recompute, port)  # sent to nobody: noticed within PEER_S
    drive({pd.recompute: out}, lambda: set(waiting) <= set(out.finish), timeout_s=DRIVE_S)
    reborn = victim(port)
    assert reborn.connector.nonce != producer.connector.nonce
    again, prompt = paired(pd, reborn, pd.recompute, 150)
    engines = {reborn: produced, pd.recompute: out}
    drive(engines, lambda: again in out.finish and not reborn.scheduler.held,
          timeout_s=DRIVE_S)
    assert out.num_cached[again] == len(prompt) - 1, "the restarted producer was not used"
    assert out.tokens[again] == pd.reference.tokens([prompt], sampling_mix(1))[0]


class BreakingGroups:
    """A worker's pair groups where the first join fails at once (the producer died
    while its rank joined) and every later join of that pair never returns, as a join
    to a dead producer does."""

    def __init__(self, groups):
        self.groups = groups
        self.release = threading.Event()
        self.calls = 0

    def get(self, key, store_address, role):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("gloo: Connection closed by peer")
        self.release.wait()
        raise RuntimeError("released")

    def drop(self, key):
        self.groups.drop(key)


def test_transfer_over_a_broken_pair_fails_at_once(pd):
    """Once a receiving rank's pair group broke, the next transfer over the same pair fails
    as soon as it is registered, instead of waiting for a producer that is gone."""
    consumer = pd.fail
    worker = connector_worker(consumer)
    original, broken = worker.groups, BreakingGroups(worker.groups)
    worker.groups = broken
    out = Collected()
    try:
        for attempt in range(2):
            rid = unique_id(f"broken-{attempt}")
            consumer.add_request(consumer_request(consumer, rid, pd.prompts.make(40),
                                                  sampling_mix(1)[0], pd.dead_port))
            drive({consumer: out}, lambda: rid in consumer.connector._consumed)
            consumer.connector._handle(ProducerAccept(rid, "ghost", "ghost-nonce", 1))
            took = drive({consumer: out}, lambda: rid in out.finish, timeout_s=DRIVE_S)
            assert took < PEER_S * 0.9, f"attempt {attempt}: {took:.2f} s"
            reason = consumer.take_failed()[rid]
            assert "connection to the prefill instance broke" in reason, reason
        assert broken.calls == 1, "a receiver joined a pair known to be broken"
        assert_clean(consumer, tombstones_ok=True)
    finally:
        broken.release.set()
        worker.groups = original
