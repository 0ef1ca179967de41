"""Runs the model for one SchedulerOutput: inputs, forward, logits, sampling."""
import math
from typing import Optional

import torch

from vllm.attention.layer import MLAAttention, PagedAttentionLayer
from vllm.config import VllmConfig
from vllm.core.sched_output import (EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput,
                                    SchedulerOutput)
from vllm.forward_context import set_forward_context
from vllm.platforms import current_platform
from vllm.sample.metadata import SamplingMetadata
from vllm.sample.sampler import Sampler
from vllm.worker.batch_inputs import BatchInputs, build_batch_inputs
from vllm.worker.request_state import CachedRequestState


class ModelRunner:

    def __init__(self, vllm_config: VllmConfig, device: torch.device, connector=None):
        self.vllm_config = vllm_config
        self.connector = connector  # worker half of the KV connector, or None
        self.model_config = vllm_config.model_config
        self.block_size = vllm_config.cache_config.block_size
        self.device = device
        self.model: Optional[torch.nn.Module] = None
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.requests: dict[str, CachedRequestState] = {}
        self.sampler = Sampler()
        self.graph_runner = None  # decode steps as graphs, where the platform offers them

    def load_model(self) -> None:
        from vllm.model_executor.model_loader import get_model
        cfg = self.model_config
        self.model = get_model(cfg.model, cfg.hf_config, cfg.dtype, self.device,
                               batch_invariant=cfg.batch_invariant,
                               quantization=cfg.quantization)
        if self.vllm_config.additional_config.get("chunked_prefill_for_mla"):
            for layer in self.attention_layers().values():
                if isinstance(layer, MLAAttention):
                    layer.impl.enable_chunked_context_prefill()

    def attention_layers(self) -> dict[str, PagedAttentionLayer]:
        return {module.layer_name: module for module in self.model.modules()
                if isinstance(module, PagedAttentionLayer)}

    def kv_cache_bytes_per_block(self) -> int:
        """Every layer's cache for one block on this rank, as its layer and the backend
        lay it out (K and V heads, or an MLA latent)."""
        backend = current_platform.get_attn_backend_cls()
        element_size = torch.empty((), dtype=self.model_config.dtype).element_size()
        elements = sum(math.prod(layer.cache_shape(backend, 1, self.block_size))
                       for layer in self.attention_layers().values())
        return elements * element_size

    def initialize_kv_cache(self, num_blocks: int) -> None:
        backend = current_platform.get_attn_backend_cls()
        self.kv_caches = {
            name: torch.zeros(layer.cache_shape(backend, num_blocks, self.block_size),
                              dtype=self.model_config.dtype, device=self.device)
            for name, layer in self.attention_layers().items()}
        if self._graphs_allowed():
            # Graphs are captured here, before the connector can start KV threads.
            from vllm.worker.graph_runner import make_graph_runner
            self.graph_runner = make_graph_runner(current_platform, self.vllm_config,
                                                  self.model, self.kv_caches, self.device)
        if self.connector is not None:
            self.connector.register_kv_caches(self.kv_caches)

    def _graphs_allowed(self) -> bool:
        """Graphs skip the attention layer's Python, so no KV may be streamed from it: no
        connector, or one that only receives."""
        kv_config = self.vllm_config.kv_transfer_config
        return self.connector is None or getattr(kv_config, "kv_role", None) == "kv_consumer"

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(scheduler_output)
        if self.connector is not None:
            self.connector.bind_connector_metadata(scheduler_output.kv_connector_metadata)
        if scheduler_output.is_empty:
            return EMPTY_MODEL_RUNNER_OUTPUT
        if self.connector is not None:
            self.connector.start_load_kv()
        batch = build_batch_inputs(self.requests, scheduler_output.num_scheduled_tokens,
                                   self.block_size)
        if self.graph_runner is not None and self.graph_runner.can_run(batch.attn_metadata):
            hidden_states = self.graph_runner.run(batch.input_ids, batch.positions,
                                                  batch.attn_metadata)  # (T, hidden)
        else:
            attn_metadata = current_platform.get_attn_backend_cls().build_metadata(
                batch.attn_metadata)
            with set_forward_context(attn_metadata, self.kv_caches, self.connector):
                hidden_states = self.model(batch.input_ids.to(self.device),
                                           batch.positions.to(self.device))  # (T, hidden)
        if self.connector is not None:
            self.connector.wait_for_save()
        for req_id, count in scheduler_output.num_scheduled_tokens.items():
            self.requests[req_id].num_computed_tokens += count
        return self._sample(batch, hidden_states)

    def _sample(self, batch: BatchInputs, hidden_states: torch.Tensor) -> ModelRunnerOutput:
        sampled: dict[str, list[int]] = {}
        logprobs_by_req: dict[str, tuple] = {}
        if batch.sampling_req_ids:
            logits = self.model.compute_logits(hidden_states[batch.logits_indices])  # (N, V)
            states = [self.requests[r] for r in batch.sampling_req_ids]
            metadata = SamplingMetadata.build(
                [s.sampling_params for s in states], [s.prompt_token_ids for s in states],
                [s.output_token_ids for s in states], logits.shape[-1],
                self.model_config.eos_token_ids)
            output = self.sampler(logits, metadata)
            token_ids = output.sampled_token_ids.tolist()
            for i, state in enumerate(states):
                state.output_token_ids.append(token_ids[i])
                sampled[state.req_id] = [token_ids[i]]
            if output.logprobs is not None:
                logprobs_by_req = _split_logprobs(output.logprobs, states)
        logprobs = [logprobs_by_req.get(r) for r in batch.req_ids] if logprobs_by_req else None
        return ModelRunnerOutput(req_ids=batch.req_ids,
                                 sampled_token_ids=[sampled.get(r, []) for r in batch.req_ids],
                                 logprobs=logprobs)

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        for req_id in scheduler_output.finished_req_ids:
            self.requests.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            self.requests[new.req_id] = CachedRequestState(
                req_id=new.req_id, prompt_token_ids=new.prompt_token_ids,
                sampling_params=new.sampling_params, block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                output_token_ids=list(new.output_token_ids))
        for cached in scheduler_output.scheduled_cached_reqs:
            state = self.requests[cached.req_id]
            if cached.resumed_from_preemption:
                state.block_ids = list(cached.new_block_ids)
                if cached.resumed_token_ids is not None:
                    state.output_token_ids = list(cached.resumed_token_ids)
            else:
                state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens


def _split_logprobs(tensors, states) -> dict[str, tuple[list[int], list[float], int]]:
    num_wanted = [s.sampling_params.logprobs for s in states]
    token_ids, logprobs = tensors.token_ids.tolist(), tensors.logprobs.tolist()
    ranks = tensors.sampled_rank.tolist()
    return {s.req_id: (token_ids[i][:n + 1], logprobs[i][:n + 1], ranks[i])
            for i, (s, n) in enumerate(zip(states, num_wanted)) if n is not None}
