"""Bounds on what one request may ask of the server, checked before any work is done."""
from dataclasses import dataclass
from typing import Optional

from vllm.entrypoints.openai.errors import OpenAIError
from vllm.entrypoints.openai.request_body import DEFAULT_MAX_REQUEST_BODY_BYTES

DEFAULT_MAX_N = 128
MAX_SEQUENCES_PER_REQUEST = 1024  # prompts x n: what one request may put in the engine


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; built once per server from its flags and model."""

    max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    max_n: int = DEFAULT_MAX_N
    # A text longer than this cannot fit in max_model_len tokens, so is refused untokenized.
    max_prompt_bytes: Optional[int] = None


def longest_token_bytes(tokenizer) -> int:
    """An upper bound on the UTF-8 bytes of text that one token of `tokenizer` covers."""
    vocab = tokenizer.get_vocab()
    return max((len(piece.encode("utf-8", "replace")) for piece in vocab), default=1)


def max_prompt_bytes(max_model_len: int, tokenizer) -> int:
    return max_model_len * max(longest_token_bytes(tokenizer), 1)


def check_sampling_fields(request, limits: RequestLimits, num_prompts: int = 1) -> None:
    """n within --max-n, and prompts x n within MAX_SEQUENCES_PER_REQUEST."""
    n = request.n if request.n is not None else 1
    if n > limits.max_n:
        raise OpenAIError(f"n must be at most {limits.max_n} (--max-n), got {n}", param="n")
    if n * num_prompts > MAX_SEQUENCES_PER_REQUEST:
        raise OpenAIError(f"a request may ask for at most {MAX_SEQUENCES_PER_REQUEST} "
                          f"sequences (prompts x n), got {num_prompts} x {n}",
                          param="n" if n > 1 else "prompt")


def check_prompt_text(text: str, limits: RequestLimits, param: str) -> None:
    """Refuse a text too long to fit in max_model_len tokens before tokenizing it."""
    bound = limits.max_prompt_bytes
    if bound is None or len(text) * 4 <= bound:  # UTF-8 takes at most 4 bytes a character
        return
    size = len(text.encode("utf-8"))
    if size > bound:
        raise OpenAIError(f"the {param} text ({size} bytes) cannot fit in the model's "
                          f"context: it is longer than {bound} bytes (max_model_len times "
                          "the longest token)", param=param)
