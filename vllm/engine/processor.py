"""Turns user prompts and sampling parameters into validated engine-core requests."""
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from vllm.config import ModelConfig
from vllm.core.messages import EngineCoreRequest
from vllm.kv_transfer_params import TRANSFER_ID
from vllm.sampling_params import INT64_MAX, SamplingParams

if TYPE_CHECKING:
    from vllm.core.request import Request


class ParsedPrompt(NamedTuple):
    """A prompt after Processor.parse_prompt: its text (None for token ids) and checked ids."""

    text: Optional[str]
    token_ids: list[int]


PromptType = Union[str, list[int], dict]


class InvalidRequestError(ValueError):
    """A request the engine refuses; the message names the offending value."""


class Processor:

    def __init__(self, model_config: ModelConfig, tokenizer):
        self.model_config = model_config
        self.tokenizer = tokenizer

    def parse_prompt(self, prompt: PromptType) -> ParsedPrompt:
        """Tokenize a text prompt, check token ids against the vocabulary."""
        if isinstance(prompt, str):
            return ParsedPrompt(prompt, self.tokenizer.encode(prompt))
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return ParsedPrompt(prompt.get("prompt"),
                                    self._check_token_ids(prompt["prompt_token_ids"]))
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return ParsedPrompt(prompt["prompt"], self.tokenizer.encode(prompt["prompt"]))
            raise InvalidRequestError("a prompt dict needs 'prompt' (str) or "
                                      "'prompt_token_ids' (list of int)")
        if isinstance(prompt, list):
            return ParsedPrompt(None, self._check_token_ids(prompt))
        raise InvalidRequestError(f"a prompt must be a string, a list of token ids or a dict, "
                                  f"got {type(prompt).__name__}")

    def _check_token_ids(self, token_ids: Any) -> list[int]:
        if not isinstance(token_ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
            raise InvalidRequestError("prompt_token_ids must be a list of integers")
        check_token_ids_in_vocab(token_ids, self.model_config.vocab_size)
        return token_ids

    def make_request(self, request_id: str, prompt_token_ids: list[int],
                     params: SamplingParams, arrival_time: Optional[float] = None,
                     kv_transfer_params: Optional[dict] = None) -> EngineCoreRequest:
        max_len = self.model_config.max_model_len
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty")
        if num_prompt >= max_len:
            raise InvalidRequestError(
                f"the prompt ({num_prompt} tokens) is too long: max_model_len is {max_len} "
                "and at least one token must be generated")
        if params.max_tokens is None:
            params = params.clone()
            params.max_tokens = self._default_max_tokens(max_len - num_prompt)
        if params.logprobs is not None and params.logprobs > self.model_config.vocab_size:
            raise InvalidRequestError(f"logprobs={params.logprobs} exceeds the vocabulary size")
        check_params_in_vocab(params, self.model_config.vocab_size)
        return EngineCoreRequest(request_id, prompt_token_ids, params,
                                 time.time() if arrival_time is None else arrival_time,
                                 kv_transfer_params)

    def _default_max_tokens(self, room: int) -> int:
        """The generation config's max_new_tokens, else up to max_model_len."""
        default = self.model_config.default_max_tokens
        return room if default is None else min(room, default)

    def make_requests(self, request_id: str, prompt_token_ids: list[int],
                      params: SamplingParams, kv_transfer_params: Optional[dict] = None
                      ) -> list[EngineCoreRequest]:
        """One request, or n children "{i}_{request_id}" seeded seed + i for n > 1."""
        if params.seed is not None and params.seed + params.n - 1 > INT64_MAX:
            raise InvalidRequestError(f"seed + n - 1 must fit in a signed 64-bit integer "
                                      f"(each of the n samples takes the next seed), got "
                                      f"seed={params.seed}, n={params.n}")
        if params.n == 1:
            return [self.make_request(request_id, prompt_token_ids, params,
                                      kv_transfer_params=kv_transfer_params)]
        children = []
        for index in range(params.n):
            child_params = params.clone()
            child_params.n = 1
            if params.seed is not None:
                child_params.seed = params.seed + index
            children.append(self.make_request(f"{index}_{request_id}", prompt_token_ids,
                                              child_params, kv_transfer_params=_child_kv_params(
                                                  kv_transfer_params, request_id, index)))
        return children


def check_token_ids_in_vocab(token_ids: list[int], vocab_size: int) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(f"token id {bad[0]} is out of vocabulary (size {vocab_size})")


def check_params_in_vocab(params: SamplingParams, vocab_size: int) -> None:
    """What the sampler would trip over at step time must be refused at admission."""
    outside = [t for t in (params.logit_bias or {}) if t >= vocab_size]
    if outside:
        raise InvalidRequestError(f"logit_bias is outside the vocabulary: token id "
                                  f"{outside[0]} (size {vocab_size})")


def check_request_fits_model(request: "Request", vocab_size: int) -> None:
    """The engine core's own check of a request that came over the wire."""
    check_token_ids_in_vocab(request.prompt_token_ids, vocab_size)
    check_params_in_vocab(request.sampling_params, vocab_size)


def _child_kv_params(params: Optional[dict], parent_id: str, index: int) -> Optional[dict]:
    """The first child takes the parent's KV transfer under the parent's id; the others
    compute their prompt locally."""
    if not params:
        return None
    if index > 0:
        return None
    return {**params, TRANSFER_ID: params.get(TRANSFER_ID, parent_id)}
