"""Turns the sampler's per-step logprob rows into vLLM-shaped dict[int, Logprob] lists."""

from typing import Any, Sequence

from vllm.outputs import Logprob, PromptLogprobs, SampleLogprobs


def _as_list(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def make_logprob_dict(
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    first_rank: int,
    tokenizer: Any = None,
) -> dict[int, Logprob]:
    """Build {token_id: Logprob} from one row: entry 0 is the chosen token with
    rank first_rank, entries 1..k are the top-k with ranks 1..k.

    A chosen token that is also in the top-k appears once.
    """
    ids, values = _as_list(token_ids), _as_list(logprobs)
    ranks = [first_rank] + list(range(1, len(ids)))
    result: dict[int, Logprob] = {}
    for token_id, value, rank in zip(ids, values, ranks):
        if token_id not in result:
            result[token_id] = Logprob(float(value), rank, _decode_one(tokenizer, token_id))
    return result


def _decode_one(tokenizer: Any, token_id: int) -> str | None:
    if tokenizer is None:
        return None
    return tokenizer.decode([token_id])


class LogprobsProcessor:
    """Accumulates one request's sample (and optionally prompt) logprobs.

    num_logprobs None means logprobs were not requested: logprobs and
    cumulative_logprob then stay None, as in vLLM.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_logprobs: int | None,
        num_prompt_logprobs: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.num_logprobs = num_logprobs
        self.logprobs: SampleLogprobs | None = None if num_logprobs is None else []
        self.cumulative_logprob: float | None = None if num_logprobs is None else 0.0
        self.prompt_logprobs: PromptLogprobs | None = (
            None if num_prompt_logprobs is None else [None]
        )

    @classmethod
    def from_params(cls, tokenizer: Any, params: Any) -> "LogprobsProcessor":
        """Read the logprobs / prompt_logprobs counts from sampling params."""
        return cls(
            tokenizer,
            getattr(params, "logprobs", None),
            getattr(params, "prompt_logprobs", None),
        )

    def update(self, token_ids: Sequence[int], logprobs: Sequence[float], sampled_rank: int) -> None:
        """Record one generated token: index 0 is the sampled token, 1..k the top-k."""
        if self.logprobs is None:
            return
        entry = make_logprob_dict(token_ids, logprobs, sampled_rank, self.tokenizer)
        self.logprobs.append(entry)
        self.cumulative_logprob += float(_as_list(logprobs)[0])

    def update_prompt(
        self, token_ids: Sequence[int], logprobs: Sequence[float], prompt_token_rank: int
    ) -> None:
        """Record the next prompt position: index 0 is the actual prompt token."""
        if self.prompt_logprobs is None:
            return
        entry = make_logprob_dict(token_ids, logprobs, prompt_token_rank, self.tokenizer)
        self.prompt_logprobs.append(entry)
