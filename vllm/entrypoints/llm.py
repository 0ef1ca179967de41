"""The offline `LLM` class, as vLLM users know it."""
import itertools
from typing import Optional, Sequence, Union

from tqdm import tqdm

from vllm.engine.arg_utils import EngineArgs
from vllm.engine.llm_engine import LLMEngine
from vllm.engine.processor import PromptType
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams


class LLM:
    """Generate with a model in this process.

    `model` is a Hugging Face folder (config.json, *.safetensors, tokenizer) or a .gguf file;
    keyword arguments are vLLM's engine arguments (max_model_len, max_num_seqs, ...).
    """

    def __init__(self, model: Optional[str] = None, **kwargs):
        unknown = set(kwargs) - EngineArgs.field_names()
        if unknown:
            raise TypeError(f"unknown engine argument {sorted(unknown)[0]!r}")
        self.llm_engine = LLMEngine(EngineArgs(model=model, **kwargs), usage_context="llm_class")
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (False while a request holds blocks)."""
        return self.llm_engine.reset_prefix_cache()

    def get_default_sampling_params(self) -> SamplingParams:
        """What `sampling_params=None` means: the model's generation config (see
        --generation-config) over vLLM's defaults."""
        model_config = self.llm_engine.vllm_config.model_config
        max_tokens = {} if model_config.default_max_tokens is None else {"max_tokens": None}
        return SamplingParams(**model_config.sampling_defaults, **max_tokens)

    def generate(self, prompts: Union[PromptType, Sequence[PromptType]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params = self._params_per_prompt(sampling_params, len(prompts))
        request_ids = [str(next(self._counter)) for _ in prompts]
        self.llm_engine.add_requests(request_ids, prompts, params)
        return self._run(request_ids, use_tqdm)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True,
             chat_template: Optional[str] = None, add_generation_prompt: bool = True,
             chat_template_kwargs: Optional[dict] = None) -> list[RequestOutput]:
        """`messages`: one conversation (list of {role, content}) or a list of them."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation, chat_template=chat_template, tokenize=False,
                add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {}))
            token_ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": token_ids})
        return self.generate(prompts, sampling_params, use_tqdm)

    @staticmethod
    def _params_per_prompt(sampling_params, count: int) -> list[SamplingParams]:
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise ValueError(f"got {len(params)} sampling params for {count} prompts")
        return params

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True,
                   disable=not use_tqdm)
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        except BaseException:
            engine.abort_request([r for r in request_ids if r not in finished])
            raise
        finally:
            bar.close()
        return [finished[r] for r in request_ids]
