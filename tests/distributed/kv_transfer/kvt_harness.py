"""In-process prefill/decode harness: engines on free ports, requests, a driver that steps
several EngineCores in turn, a colocated reference and checks that nothing leaked."""
import itertools
import socket
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterable, Optional

import pytest
import torch

from free_ports import free_port_range
from vllm.batch_invariant import BATCH_INVARIANT_ENV
from vllm.core.request import Request
from vllm.engine.arg_utils import EngineArgs
from vllm.engine.core import EngineCore
from vllm.sampling_params import SamplingParams

HOST = "127.0.0.1"
NUM_BLOCKS = 128
MAX_MODEL_LEN = 512
DRIVE_TIMEOUT_S = 60.0

_ids = itertools.count()


def unique_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


# ---- ports ---------------------------------------------------------------------------------
def free_port_pair() -> int:
    """A port p with p and p + 1 both free (the connector binds both)."""
    return free_port_range(2, HOST)


def dead_port() -> tuple[socket.socket, int]:
    """A port that refuses connections for as long as the returned socket stays open
    (bound, never listening), so nobody else can take it meanwhile."""
    holder = socket.socket()
    holder.bind((HOST, 0))
    return holder, holder.getsockname()[1]


# ---- engines -------------------------------------------------------------------------------
def kv_config(role: str, port: Optional[int] = None, extra: Optional[dict] = None,
              **fields) -> dict:
    return {"kv_connector": "PushConnector", "kv_role": role, "kv_ip": HOST,
            "kv_port": port or free_port_pair(), "engine_id": unique_id(role),
            "kv_connector_extra_config": dict(extra or {}), **fields}


def make_core(kv: Optional[dict] = None, model: Optional[str] = None,
              **overrides) -> EngineCore:
    """An in-process EngineCore, in batch-invariant mode wherever the mode exists (float32
    on the CPU platform). The tests compare a consumer's tokens with a colocated core's: the
    consumer computes a prompt's last token alone or beside whatever else its step holds,
    the reference inside the whole prompt's prefill. Without the mode those sum in
    different orders (on AVX2, MKL's float32 GEMM gives a row other bits at M = 1, 2-3 and
    >= 4) and a seeded draw can flip on the last bit; the bfloat16 and fake-NPU cores,
    which have no such mode, are compared by the near-tie rule instead."""
    args = dict(model=model, max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS,
                dtype="float32", kv_transfer_config=kv)
    args.update(overrides)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(BATCH_INVARIANT_ENV, "1" if invariant_mode_exists(args["dtype"]) else "0")
        config = EngineArgs(**args).create_engine_config("llm_class")
    return EngineCore(config)


def invariant_mode_exists(dtype: str) -> bool:
    from vllm.config import ConfigError
    from vllm.platforms import current_platform
    try:
        current_platform.batch_invariant_linear(getattr(torch, dtype))
    except ConfigError:
        return False
    return True


class EngineSet:
    """The engines of one test module, shut down together, also when making one fails."""

    def __init__(self, *args):
        self.cores: list[EngineCore] = []
        try:
            self.build(*args)
        except BaseException:
            self.shutdown()
            raise

    def build(self, *args) -> None:
        raise NotImplementedError

    def core(self, kv: Optional[dict] = None, model: Optional[str] = None,
             **overrides) -> EngineCore:
        core = make_core(kv, model=model, **overrides)
        self.cores.append(core)
        return core

    def shutdown(self) -> None:
        for core in self.cores:
            core.shutdown()

    @classmethod
    @contextmanager
    def running(cls, *args):
        """The engines, shut down when the block ends."""
        setup = cls(*args)
        try:
            yield setup
        finally:
            setup.shutdown()


def kv_port_of(core: EngineCore) -> int:
    return core.vllm_config.kv_transfer_config.kv_port


def eos_of(core: EngineCore) -> Optional[int]:
    return getattr(core.vllm_config.model_config.hf_config, "eos_token_id", None)


def connector_worker(core: EngineCore):
    return core.executor.worker.connector


def kv_caches(core: EngineCore) -> dict[str, torch.Tensor]:
    return core.executor.worker.model_runner.kv_caches


# ---- requests ------------------------------------------------------------------------------
def producer_request(core: EngineCore, request_id: str, prompt: list[int]) -> Request:
    return Request(request_id, list(prompt), SamplingParams(temperature=0, max_tokens=1),
                   eos_of(core), kv_transfer_params={"do_remote_decode": True})


def consumer_request(core: EngineCore, request_id: str, prompt: list[int],
                     params: SamplingParams, producer_port: Optional[int] = None,
                     remote: Optional[dict] = None) -> Request:
    """remote: the producer's kv_transfer_params (as its response carries them); without
    them, the request names HOST:producer_port."""
    kv = dict(remote) if remote else {"do_remote_prefill": True, "remote_host": HOST,
                                      "remote_port": producer_port}
    return Request(request_id, list(prompt), params, eos_of(core), kv_transfer_params=kv)


def plain_request(core: EngineCore, request_id: str, prompt: list[int],
                  params: SamplingParams) -> Request:
    return Request(request_id, list(prompt), params, eos_of(core))


# ---- driving -------------------------------------------------------------------------------
class Collected:
    """Everything one engine emitted, by request id."""

    def __init__(self):
        self.tokens: dict[str, list[int]] = defaultdict(list)
        self.finish: dict[str, str] = {}
        self.num_cached: dict[str, int] = {}
        self.kv_params: dict[str, Optional[dict]] = {}
        self.outputs: dict[str, list] = defaultdict(list)

    def take(self, outputs) -> None:
        for output in outputs:
            rid = output.request_id
            self.outputs[rid].append(output)
            self.tokens[rid].extend(output.new_token_ids)
            self.num_cached.setdefault(rid, output.num_cached_tokens)
            if output.finished:
                assert rid not in self.finish, f"{rid} finished twice"
                self.finish[rid] = output.finish_reason
                self.kv_params[rid] = output.kv_transfer_params


def step_all(engines: dict[EngineCore, Collected]) -> None:
    for core, sink in engines.items():
        sink.take(core.step())


def drive(engines: dict[EngineCore, Collected], done: Callable[[], bool],
          timeout_s: float = DRIVE_TIMEOUT_S) -> float:
    """Step every engine in turn until done(); returns the seconds it took."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not done after {timeout_s} s: " + "; ".join(
                describe(core) for core in engines))
        step_all(engines)
        time.sleep(0.0005)  # let the transfer threads run
    return time.monotonic() - start


def step_for(engines: dict[EngineCore, Collected], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        step_all(engines)
        time.sleep(0.002)


def idle(*cores: EngineCore) -> bool:
    return all(not core.has_unfinished_requests() and not core.scheduler.held
               for core in cores)


def describe(core: EngineCore) -> str:
    sched = core.scheduler
    return (f"{getattr(core.vllm_config.kv_transfer_config, 'engine_id', 'plain')}: "
            f"waiting={len(sched.waiting)} running={len(sched.running)} "
            f"remote={list(sched.waiting_for_remote)} held={list(sched.held)}")


def assert_clean(*cores: EngineCore, tombstones_ok: bool = False) -> None:
    """Every block free, nothing held or parked, no transfer state left behind."""
    for core in cores:
        manager = core.kv_cache_manager
        sched = core.scheduler
        assert not core.has_unfinished_requests(), describe(core)
        assert not sched.held, describe(core)
        assert not sched.waiting_for_remote, describe(core)
        assert manager.get_num_free_blocks() == manager.num_blocks, describe(core)
        assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks)
        assert not manager.req_to_blocks, list(manager.req_to_blocks)
        if core.connector is not None:
            assert not core.connector._produced, list(core.connector._produced)
            assert not core.connector._consumed, list(core.connector._consumed)
            assert not core.connector._early_ready, list(core.connector._early_ready)
            assert tombstones_ok or not core.connector._tombstones, \
                list(core.connector._tombstones)


# ---- the colocated reference -----------------------------------------------------------------
def params_key(params: SamplingParams) -> tuple:
    return (params.temperature, params.seed, params.max_tokens, params.ignore_eos)


class Reference:
    """Tokens of a plain colocated EngineCore, computed once per (prompt, params)."""

    def __init__(self, core: EngineCore):
        self.core = core
        self._cache: dict[tuple, list[int]] = {}

    def tokens(self, prompts: Iterable[list[int]], params: list[SamplingParams]
               ) -> list[list[int]]:
        keys = [(tuple(p), params_key(sp)) for p, sp in zip(prompts, params)]
        todo = {key: sp for key, sp in zip(keys, params) if key not in self._cache}
        if todo:
            sink = Collected()
            ids = {}
            for (prompt, _), sp in todo.items():
                rid = unique_id("ref")
                ids[rid] = (prompt, params_key(sp))
                self.core.add_request(plain_request(self.core, rid, list(prompt), sp))
            drive({self.core: sink}, lambda: not self.core.has_unfinished_requests())
            for rid, key in ids.items():
                self._cache[key] = sink.tokens[rid]
        return [self._cache[key] for key in keys]


# ---- spying on the worker halves ------------------------------------------------------------
class MetadataSpy:
    """Records every SendJob / RecvJob / cancel a worker half is given."""

    def __init__(self, core: EngineCore):
        self.sends = []
        self.recvs = []
        self.cancels = []
        worker = connector_worker(core)
        original = worker.bind_connector_metadata

        def bind(metadata):
            if metadata is not None:
                self.sends.extend(metadata.sends)
                self.recvs.extend(metadata.recvs)
                self.cancels.extend(metadata.cancels)
            return original(metadata)

        worker.bind_connector_metadata = bind

    def clear(self) -> None:
        self.sends.clear()
        self.recvs.clear()
        self.cancels.clear()

    def sends_of(self, key: str) -> list:
        return [job for job in self.sends if job.key == key]


class MessageSpy:
    """Records the control messages a connector's scheduler half sends."""

    def __init__(self, core: EngineCore):
        self.sent = []
        connector = core.connector
        original = connector._send

        def send(address, message):
            self.sent.append((address, message))
            return original(address, message)

        connector._send = send

    def of_type(self, cls) -> list:
        return [message for _, message in self.sent if isinstance(message, cls)]


def read_slots(cache: torch.Tensor, block_ids: list[int], start: int, end: int,
               block_size: int) -> torch.Tensor:
    """(2, end - start, KVH, D) by plain indexing of a (2, blocks, block_size, KVH, D) cache,
    or (end - start, latent) of an MLA (blocks, block_size, latent) one."""
    latent = cache.dim() == 3
    rows = [cache[block_ids[pos // block_size], pos % block_size] if latent else
            cache[:, block_ids[pos // block_size], pos % block_size]
            for pos in range(start, end)]
    return torch.stack(rows, dim=0 if latent else 1)


# ---- prompts -------------------------------------------------------------------------------
BODY_TEXT = " ".join(
    f"Entry {k}: the {colour} {thing} near the {place} was {verb} by {count} visitors "
    f"before the {time} bell rang."
    for k, (colour, thing, place, verb, count, time) in enumerate(
        [("red", "lantern", "harbour", "admired", "seven", "evening"),
         ("green", "bicycle", "library", "repaired", "twelve", "morning"),
         ("silver", "kettle", "station", "polished", "three", "noon"),
         ("blue", "kite", "orchard", "chased", "forty", "midnight"),
         ("yellow", "violin", "bridge", "played", "nine", "school")] * 8))

_first_tokens = itertools.count(1000)


class PromptMaker:
    """Prompts of exact lengths that share no prefix block with any other prompt made:
    each starts with its own token, then runs on with ordinary text."""

    def __init__(self, tokenizer):
        self.body = tokenizer.encode(BODY_TEXT)
        assert len(self.body) > MAX_MODEL_LEN

    def make(self, length: int, offset: int = 0) -> list[int]:
        return [next(_first_tokens)] + self.body[offset:offset + length - 1]


def sampling_mix(count: int, max_tokens: int = 8) -> list[SamplingParams]:
    """Greedy and seeded temperature-0.8 sampling, alternating."""
    return [SamplingParams(temperature=0, max_tokens=max_tokens) if i % 2 == 0 else
            SamplingParams(temperature=0.8, seed=100 + i, max_tokens=max_tokens)
            for i in range(count)]


class TransferCheck:
    """At the moment the consumer's scheduler learns a request's KV has arrived, compares
    the consumer's cache slots with the producer's, byte for byte, by plain indexing, and
    checks that the producer's sends covered [token_start, token_end) once."""

    def __init__(self, consumer: EngineCore, consumer_spy: MetadataSpy,
                 producers: list[tuple[EngineCore, MetadataSpy]]):
        self.consumer = consumer
        self.consumer_spy = consumer_spy
        self.producers = producers
        self.checked: dict[str, tuple[int, int]] = {}
        self.problems: list[str] = []
        original = consumer.scheduler._remote_kv_loaded

        def loaded(request_id):
            try:
                self._compare(request_id)
            except Exception as error:  # reported by the test, never lost in the driver
                self.problems.append(f"{request_id}: {error!r}")
            return original(request_id)

        consumer.scheduler._remote_kv_loaded = loaded

    def clear(self) -> None:
        self.problems.clear()
        self.checked.clear()

    def _compare(self, request_id: str) -> None:
        recvs = [job for job in self.consumer_spy.recvs if job.key == request_id]
        assert len(recvs) == 1, f"{len(recvs)} receive jobs"
        recv = recvs[0]
        producer, sends = next((core, spy.sends_of(request_id))
                               for core, spy in self.producers if spy.sends_of(request_id))
        self._check_cover(request_id, recv, sends)
        producer_blocks = max((job.block_ids for job in sends), key=len)
        block_size = self.consumer.vllm_config.cache_config.block_size
        for name, cache in kv_caches(self.consumer).items():
            got = read_slots(cache, recv.block_ids, recv.token_start, recv.token_end,
                             block_size)
            want = read_slots(kv_caches(producer)[name], producer_blocks, recv.token_start,
                              recv.token_end, block_size)
            if not want.any():
                self.problems.append(f"{request_id}: producer KV of {name} is all zero")
            if not torch.equal(got, want):
                self.problems.append(f"{request_id}: KV of {name} differs")
        self.checked[request_id] = (recv.token_start, recv.token_end)

    def _check_cover(self, request_id: str, recv, sends) -> None:
        position = recv.token_start
        for job in sorted(sends, key=lambda job: job.token_start):
            if job.token_start != position or job.token_end <= job.token_start:
                spans = [(j.token_start, j.token_end) for j in sends]
                self.problems.append(f"{request_id}: sends {spans} do not tile "
                                     f"[{recv.token_start}, {recv.token_end})")
                return
            position = job.token_end
        if position != recv.token_end:
            self.problems.append(f"{request_id}: sends end at {position}, not {recv.token_end}")
