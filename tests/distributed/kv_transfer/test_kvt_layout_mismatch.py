"""A consumer whose KV layout differs from the producer's is refused, never fed bytes it
would misread: it fails the request or recomputes it by policy, and nothing leaks."""
import pytest
import torch

from kvt_harness import (Collected, EngineSet, MetadataSpy, Reference, assert_clean,
                         consumer_request, drive, idle, kv_config, producer_request)
from vllm.sampling_params import SamplingParams


def make_wide_head_model(out: str) -> str:
    """Like the shared tiny Llama (2 layers, 2 KV heads) but with head_size 32, not 16."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=0.2,
                         eos_token_id=2, bos_token_id=1)
    torch.manual_seed(1)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
    return out


class Setup(EngineSet):

    def build(self, llama: str, wide: str):
        self.producer = self.core(kv_config("kv_producer"), llama)
        self.bf16 = self.core(kv_config("kv_consumer", kv_load_failure_policy="fail"), llama,
                              dtype="bfloat16")
        self.wide = self.core(kv_config("kv_consumer"), wide)
        self.wide_colocated = self.core(None, wide)
        self.spy = MetadataSpy(self.producer)


@pytest.fixture(scope="module")
def pd(tiny_model_dirs, tmp_path_factory):
    wide = make_wide_head_model(str(tmp_path_factory.mktemp("wide_head")))
    setup = Setup(tiny_model_dirs["llama"], wide)
    try:
        yield setup
    finally:
        setup.shutdown()


def prompt_of(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 512, (length,), generator=generator).tolist()


def run(pd, consumer, rid: str, prompt: list[int], params: SamplingParams) -> Collected:
    """Producer first (its blocks held), then the consumer."""
    produced, consumed = Collected(), Collected()
    pd.producer.add_request(producer_request(pd.producer, rid, prompt))
    drive({pd.producer: produced}, lambda: not pd.producer.has_unfinished_requests())
    assert rid in pd.producer.scheduler.held
    consumer.add_request(consumer_request(consumer, rid, prompt, params,
                                          remote=produced.kv_params[rid]))
    drive({pd.producer: produced, consumer: consumed}, lambda: idle(pd.producer, consumer))
    return consumed


def test_layouts_really_differ(pd):
    layouts = {core.connector.layout for core in (pd.producer, pd.bf16, pd.wide)}
    assert len(layouts) == 3
    assert pd.bf16.connector.layout.dtype == "bfloat16"
    assert pd.wide.connector.layout.units.size == 2 * pd.producer.connector.layout.units.size


def test_dtype_mismatch_fails_with_reason(pd):
    consumed = run(pd, pd.bf16, "layout-dtype", prompt_of(40, 0),
                   SamplingParams(temperature=0, max_tokens=4))
    assert consumed.finish["layout-dtype"] == "abort"
    assert consumed.tokens["layout-dtype"] == []
    reason = pd.bf16.take_failed()["layout-dtype"]
    assert "layout differs" in reason and "bfloat16" in reason, reason
    assert pd.spy.sends == [], "KV was sent to a consumer that cannot read it"
    assert_clean(*pd.cores, tombstones_ok=True)


def test_head_size_mismatch_recomputes(pd):
    prompt = prompt_of(50, 1)
    params = SamplingParams(temperature=0, max_tokens=6)
    consumed = run(pd, pd.wide, "layout-head", prompt, params)
    assert consumed.tokens["layout-head"] == \
        Reference(pd.wide_colocated).tokens([prompt], [params])[0]
    assert consumed.num_cached["layout-head"] == 0
    assert pd.wide.take_failed() == {}
    assert pd.spy.sends == []
    assert_clean(*pd.cores, tombstones_ok=True)
