from types import SimpleNamespace

import pytest

from vllm.engine.detokenizer import IncrementalDetokenizer, find_stop_string

TEXTS = [
    "Hello world! How are you today?",
    "def add(a, b):\n    return a + b  # sum . ,\n",
    "Party time 😀🎉👍🏽 with family 👨‍👩‍👧!",
    "你好，世界。今天天气很好。日本語のテキストも。",
    "Mixed: café naïve Ωmega → ∑ 😀 你好 end",
]
PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"


def make_params(**overrides):
    values = dict(
        skip_special_tokens=True,
        spaces_between_special_tokens=True,
        stop=None,
        include_stop_str_in_output=False,
        detokenize=True,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def stream(detok, token_ids, stop_terminated=False):
    """Feed tokens one by one; return (stop string, deltas)."""
    deltas = []
    for i, token_id in enumerate(token_ids):
        last = i == len(token_ids) - 1
        stop = detok.update([token_id], stop_terminated and last)
        finished = stop is not None or last
        deltas.append(detok.get_next_output_text(finished, delta=True))
        if stop is not None:
            return stop, deltas
    return None, deltas


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return tokenizer.encode(PROMPT)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_matches_full_decode(tokenizer, prompt_ids, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, make_params())
    _, deltas = stream(detok, ids)
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    assert expected == text
    assert detok.output_text == expected
    assert "".join(deltas) == expected
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_characters_split_over_tokens_are_held_back(tokenizer):
    ids = tokenizer.encode("😀")
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, [], make_params())
    emitted = []
    for token_id in ids:
        detok.update([token_id], False)
        emitted.append(detok.output_text)
    assert emitted[:-1] == [""] * (len(ids) - 1)
    assert emitted[-1] == "😀"


def test_empty_prompt_and_batched_updates(tokenizer):
    text = TEXTS[2]
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [], make_params())
    for start in range(0, len(ids), 3):
        detok.update(ids[start:start + 3], False)
    assert detok.output_text == text
    assert detok.token_ids == ids


def test_special_tokens_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("<|im_start|>assistant\nHi there<|im_end|>")
    for skip in (True, False):
        detok = IncrementalDetokenizer(tokenizer, [], make_params(skip_special_tokens=skip))
        stream(detok, ids)
        assert detok.output_text == tokenizer.decode(ids, skip_special_tokens=skip)
    assert "<|im_start|>" in detok.output_text


def test_window_stays_small(tokenizer):
    decoded_lengths = []

    class CountingTokenizer:
        def decode(self, ids, **kwargs):
            decoded_lengths.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    ids = tokenizer.encode(" ".join(TEXTS) * 3)
    detok = IncrementalDetokenizer(CountingTokenizer(), [], make_params())
    stream(detok, ids)
    assert detok.output_text == tokenizer.decode(ids)
    assert max(decoded_lengths) <= 8


def test_single_stop_string(tokenizer):
    ids = tokenizer.encode("Hello world! How are you today?")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=["How"]))
    stop, deltas = stream(detok, ids)
    assert stop == "How"
    assert detok.output_text == "Hello world! "
    assert "".join(deltas) == "Hello world! "


def test_stop_string_included_when_asked(tokenizer):
    ids = tokenizer.encode("Hello world! How are you today?")
    params = make_params(stop=["How"], include_stop_str_in_output=True)
    detok = IncrementalDetokenizer(tokenizer, [], params)
    stop, deltas = stream(detok, ids)
    assert stop == "How"
    assert detok.output_text == "Hello world! How"
    assert "".join(deltas) == "Hello world! How"


def test_earliest_of_multiple_stop_strings_wins(tokenizer):
    ids = tokenizer.encode("one two three four")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=["four", "two", "zzz"]))
    stop, _ = stream(detok, ids)
    assert stop == "two"
    assert detok.output_text == "one "


def test_stop_string_spanning_two_tokens(tokenizer):
    ids = tokenizer.encode("Hello world! How are you?")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert all("lo wo" not in piece for piece in pieces)
    assert "lo wo" in pieces[0] + pieces[1]
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=["lo wo"]))
    stop, deltas = stream(detok, ids)
    assert stop == "lo wo"
    assert len(detok.token_ids) == 2
    assert detok.output_text == "Hel"
    assert "".join(deltas) == "Hel"


def test_text_after_stop_string_is_dropped(tokenizer):
    ids = tokenizer.encode("Hello world! How are you?")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=["wor"]))
    assert detok.update(ids[:2], False) == "wor"
    assert detok.output_text == "Hello "
    assert detok.update(ids[2:], False) is None
    assert detok.output_text == "Hello "
    assert detok.get_next_output_text(finished=True, delta=False) == "Hello "


@pytest.mark.parametrize("stops", [["you today"], ["!", "are you"], ["xyz123"]])
def test_streaming_never_reveals_held_back_text(tokenizer, stops):
    ids = tokenizer.encode("Hello world! How are you today? Fine.")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=stops))
    sent = []
    for i, token_id in enumerate(ids):
        stop = detok.update([token_id], False)
        finished = stop is not None or i == len(ids) - 1
        sent.append(detok.get_next_output_text(finished, delta=True))
        visible = "".join(sent)
        assert not any(s in visible for s in stops)
        if not finished:
            max_stop = max(len(s) for s in stops)
            assert len(detok.output_text) - len(visible) == min(
                len(detok.output_text), max_stop - 1
            )
        if finished:
            break
    assert "".join(sent) == detok.output_text
    assert detok.get_next_output_text(finished=True, delta=True) == ""


def test_non_delta_output_holds_back_tail_until_finished(tokenizer):
    ids = tokenizer.encode("Hello world")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=["abcd"]))
    detok.update(ids, False)
    assert detok.get_next_output_text(finished=False, delta=False) == "Hello wo"
    assert detok.get_next_output_text(finished=True, delta=False) == "Hello world"


def test_eos_text_left_out(tokenizer):
    ids = tokenizer.encode("Hi there") + [tokenizer.eos_token_id]
    for skip in (True, False):
        detok = IncrementalDetokenizer(tokenizer, [], make_params(skip_special_tokens=skip))
        stop, deltas = stream(detok, ids, stop_terminated=True)
        assert stop is None
        assert detok.output_text == "Hi there"
        assert "".join(deltas) == "Hi there"
        assert detok.token_ids == ids


def test_eos_text_kept_with_include_stop_str(tokenizer):
    ids = tokenizer.encode("Hi there") + [tokenizer.eos_token_id]
    params = make_params(skip_special_tokens=False, include_stop_str_in_output=True)
    detok = IncrementalDetokenizer(tokenizer, [], params)
    stream(detok, ids, stop_terminated=True)
    assert detok.output_text == "Hi there<|im_end|>"


def test_min_tokens_delays_stop_strings(tokenizer):
    ids = tokenizer.encode("a b a b a b")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(stop=[" b"], min_tokens=3))
    stop, _ = stream(detok, ids)
    assert stop == " b"
    assert detok.output_text == "a b a"


def test_detokenize_false_produces_no_text(tokenizer):
    ids = tokenizer.encode("Hello world")
    detok = IncrementalDetokenizer(tokenizer, [], make_params(detokenize=False, stop=["wor"]))
    assert detok.update(ids, False) is None
    assert detok.output_text == ""
    assert detok.token_ids == ids


def test_plain_namespace_defaults(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [], SimpleNamespace(stop="!"))
    assert detok.update(tokenizer.encode("Hi! there"), False) == "!"
    assert detok.output_text == "Hi"


def test_find_stop_string_only_looks_at_new_text():
    assert find_stop_string("stop here stop", ["stop"], 12, False) == ("stop", 10)
    assert find_stop_string("stop here", ["stop"], 9, False) is None
    assert find_stop_string("abc", ["bc"], 2, True) == ("bc", 3)
