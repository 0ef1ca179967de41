"""Incremental detokenization of one request's output, with stop-string detection."""

from typing import Any

REPLACEMENT_CHAR = "\ufffd"

# How many trailing prompt tokens seed the decoding window, so that the first
# output token is decoded in context (e.g. a SentencePiece leading space).
PROMPT_CONTEXT_TOKENS = 5


class TokenWindowDecoder:
    """Turns token ids into text one id at a time, decoding only a short window.

    The window holds the tokens of the previously emitted piece (whose text is
    the prefix) followed by the tokens not yet emitted; only the window is ever
    decoded. Text that ends in a broken UTF-8 sequence (U+FFFD) is held back
    until a later token completes it.
    """

    def __init__(self, tokenizer: Any, context_ids: list[int], skip_special_tokens: bool):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._window = list(context_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_len = len(self._window)
        self._prefix_text = self._decode(self._window)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self._window.append(token_id)
        window_text = self._decode(self._window)
        if len(window_text) <= len(self._prefix_text) or window_text.endswith(REPLACEMENT_CHAR):
            return ""
        new_text = window_text[len(self._prefix_text):]
        self._start_new_prefix()
        return new_text

    def _start_new_prefix(self) -> None:
        """Make the just-emitted tokens the prefix of the next window."""
        del self._window[: self._prefix_len]
        self._prefix_len = len(self._window)
        self._prefix_text = self._decode(self._window)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)


def find_stop_string(
    text: str, stops: list[str], search_from: int, include_stop: bool
) -> tuple[str, int] | None:
    """Find the earliest stop string whose match ends after search_from.

    Returns (stop string, length to truncate the text to), or None.
    """
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop, max(0, search_from - len(stop) + 1))
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    if best is None:
        return None
    index, stop = best
    return stop, index + len(stop) if include_stop else index


def _stop_list(params: Any) -> list[str]:
    stop = getattr(params, "stop", None)
    if not stop:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    return [s for s in stops if s]


class IncrementalDetokenizer:
    """Builds a request's output text as tokens arrive and watches for stop strings.

    params supplies skip_special_tokens, stop, include_stop_str_in_output,
    detokenize and min_tokens (missing attributes take SamplingParams'
    defaults). spaces_between_special_tokens is accepted but, as with vLLM's
    fast-tokenizer path, special tokens are rendered exactly as the tokenizer
    decodes them.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: Any):
        self.token_ids: list[int] = []
        self.output_text = ""
        self.stop = _stop_list(params)
        self.include_stop_str_in_output = bool(getattr(params, "include_stop_str_in_output", False))
        self.min_tokens = getattr(params, "min_tokens", 0) or 0
        self.matched_stop: str | None = None
        self._decoder = self._make_decoder(tokenizer, prompt_token_ids, params)
        self._sent_offset = 0

    @staticmethod
    def _make_decoder(tokenizer: Any, prompt_token_ids: list[int], params: Any):
        if tokenizer is None or not getattr(params, "detokenize", True):
            return None
        skip = getattr(params, "skip_special_tokens", True)
        return TokenWindowDecoder(tokenizer, list(prompt_token_ids or []), skip)

    @property
    def stop_buffer_length(self) -> int:
        """Characters withheld from streaming because they may begin a stop string."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(s) for s in self.stop) - 1

    def update(self, new_token_ids: list[int], stop_terminated: bool) -> str | None:
        """Append new output tokens; return the stop string they completed, if any.

        stop_terminated means the engine ended the request on the last of these
        tokens (eos or a stop token id); that token's text is then left out
        unless include_stop_str_in_output is set.
        """
        if not new_token_ids:
            return None
        first_count = len(self.token_ids)
        self.token_ids.extend(new_token_ids)
        if self._decoder is None or self.matched_stop is not None:
            return None
        to_decode = new_token_ids
        if stop_terminated and not self.include_stop_str_in_output:
            to_decode = new_token_ids[:-1]
        search_from = self._append_text(to_decode, first_count)
        return self._check_stop(search_from)

    def _append_text(self, token_ids: list[int], first_count: int) -> int:
        """Decode token_ids onto output_text; return where stop search may start."""
        search_from = len(self.output_text)
        for count, token_id in enumerate(token_ids, start=first_count + 1):
            self.output_text += self._decoder.push(token_id)
            if count <= self.min_tokens:
                search_from = len(self.output_text)
        return search_from

    def _check_stop(self, search_from: int) -> str | None:
        if not self.stop or len(self.token_ids) <= self.min_tokens:
            return None
        found = find_stop_string(
            self.output_text, self.stop, search_from, self.include_stop_str_in_output
        )
        if found is None:
            return None
        self.matched_stop, truncate_to = found
        self.output_text = self.output_text[:truncate_to]
        return self.matched_stop

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """Text to report now: all of it, or (delta) only what was not reported before.

        While unfinished, the tail that could still grow into a stop string is
        withheld.
        """
        done = finished or self.matched_stop is not None
        held_back = 0 if done else self.stop_buffer_length
        visible_end = max(0, len(self.output_text) - held_back)
        if not delta:
            return self.output_text[:visible_end]
        if visible_end <= self._sent_offset:
            return ""
        text = self.output_text[self._sent_offset:visible_end]
        self._sent_offset = visible_end
        return text
