"""KV events from an offline engine (LLM with kv_events_config) read by a ZMQ subscriber:
the hashes stored minus removed are the block pool's cached set, evictions and resets
are published, and the block hash module recomputes the published hashes; the prefix
cache counters count cached prompt tokens as hits."""
import random

import pytest

from kv_event_subscriber import Subscriber, all_events, apply, free_endpoints
from vllm import LLM, SamplingParams
from vllm.config import ConfigError
from vllm.core.block_hash import ROOT_HASH, chained_block_hashes, hash_block

pytestmark = pytest.mark.slow

BLOCK_SIZE = 16
NUM_BLOCKS = 24  # 384 tokens: the workload below needs about twice that
TOPIC = "kv-events"
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def endpoints():
    return free_endpoints(2)


@pytest.fixture(scope="module")
def llm(demo_model_dir, endpoints):
    endpoint, replay = endpoints
    llm = LLM(demo_model_dir, max_model_len=256, block_size=BLOCK_SIZE,
              num_gpu_blocks_override=NUM_BLOCKS, max_num_seqs=4,
              kv_events_config={"enable_kv_cache_events": True, "publisher": "zmq",
                                "endpoint": endpoint, "replay_endpoint": replay,
                                "topic": TOPIC})
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def subscriber(llm, endpoints):
    subscriber = Subscriber(*endpoints, TOPIC)
    yield subscriber
    subscriber.close()


def pool_of(llm):
    return llm.llm_engine.engine_core.kv_cache_manager.block_pool


def workload(seed: int) -> list[list[int]]:
    """3 prefixes of 3 blocks, each with 3 suffixes of 20 tokens, shuffled."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(100, 40000) for _ in range(48)] for _ in range(3)]
    prompts = [p + [rng.randrange(100, 40000) for _ in range(20)]
               for p in prefixes for _ in range(3)]
    rng.shuffle(prompts)
    return prompts


def generate(llm, prompts):
    return llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)


def test_events_rebuild_the_pools_cached_set(llm, subscriber):
    prompts = workload(0) + workload(1)
    for start in range(0, len(prompts), 6):  # several generate calls, prefixes repeat
        generate(llm, prompts[start:start + 6])
    subscriber.drain()
    batches = subscriber.batches()
    assert {b["data_parallel_rank"] for b in batches} == {0}
    events = all_events(batches)
    assert apply(events, set()) == pool_of(llm).cached_hashes() != set()
    assert any(e["type"] == "BlockRemoved" for e in events), "the tiny cache evicted nothing"
    stored = {h for e in events if e["type"] == "BlockStored" for h in e["block_hashes"]}
    for prompt in prompts:  # every full prompt block was cached at some point
        assert set(chained_block_hashes(prompt, BLOCK_SIZE)) <= stored


def test_published_hashes_recompute_from_their_token_ids(llm, subscriber):
    subscriber.drain(0.5)
    for event in all_events(subscriber.batches()):
        if event["type"] != "BlockStored":
            continue
        assert event["block_size"] == BLOCK_SIZE and event["medium"] == "GPU"
        tokens = event["token_ids"]
        parent = event["parent_block_hash"]
        parent = ROOT_HASH if parent is None else parent
        assert len(tokens) == BLOCK_SIZE * len(event["block_hashes"])
        for index, block_hash in enumerate(event["block_hashes"]):
            parent = hash_block(parent, tuple(tokens[index * BLOCK_SIZE:
                                                     (index + 1) * BLOCK_SIZE]))
            assert parent == block_hash


def test_reset_publishes_all_blocks_cleared(llm, subscriber):
    assert llm.reset_prefix_cache()
    assert pool_of(llm).cached_hashes() == set()
    subscriber.drain()
    events = all_events(subscriber.batches())
    assert events[-1] == {"type": "AllBlocksCleared"}
    assert apply(events, set()) == set()


def test_cached_prompt_tokens_count_as_hits(llm):
    scheduler = llm.llm_engine.engine_core.scheduler
    prompt = workload(7)[0]  # 68 tokens: its 4 full blocks (64 tokens) hit the 2nd time
    generate(llm, [prompt])
    queries, hits = scheduler.prefix_cache_queries, scheduler.prefix_cache_hits
    generate(llm, [prompt])
    assert scheduler.prefix_cache_queries - queries == len(prompt)
    assert scheduler.prefix_cache_hits - hits == 64
    stats = llm.llm_engine.engine_core.get_stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (
        scheduler.prefix_cache_queries, scheduler.prefix_cache_hits)


def test_a_taken_endpoint_is_refused_at_start_up(demo_model_dir, endpoints):
    with pytest.raises(ConfigError, match="cannot bind endpoint tcp://127.0.0.1"):
        LLM(demo_model_dir, max_model_len=256, num_gpu_blocks_override=NUM_BLOCKS,
            kv_events_config={"enable_kv_cache_events": True, "endpoint": endpoints[0]})


def test_a_bad_config_is_refused_before_the_model_loads():
    with pytest.raises(ConfigError, match="--kv-events-config: unknown key 'port'"):
        LLM(kv_events_config={"enable_kv_cache_events": True, "port": 5557})
