"""Request parsing (gptserve.serving.requests): every rejection names the field and what is allowed."""
import numpy as np
import pytest

from gptserve.engine.tokenizer import ByteTokenizer
from gptserve.serving.requests import NEUTRAL_ONLY, Limits, RequestError, parse_request

LIMITS = Limits(vocab_size=512, n_ctx=64, end_id=511, max_tokens_default=16, max_tokens_limit=63)


def parse(**inputs):
    arrays = {k: np.array([v] if not isinstance(v, list) else [v]) for k, v in inputs.items()}
    return parse_request(arrays, ByteTokenizer(), LIMITS)


def test_min_length_in_zero_to_max_tokens():
    assert parse(input_ids=[1, 2], max_tokens=8, min_length=8).min_length == 8
    assert parse(input_ids=[1, 2]).min_length == 0
    with pytest.raises(RequestError, match=r"min_length=9 is outside the allowed range \[0, 8\]"):
        parse(input_ids=[1, 2], max_tokens=8, min_length=9)


@pytest.mark.parametrize("name", sorted(NEUTRAL_ONLY))
def test_trt_llm_style_fields_take_their_neutral_value_only(name):
    neutral = NEUTRAL_ONLY[name]
    parse(input_ids=[1, 2], **{name: neutral})  # what genai-perf and the OpenAI frontend send by default
    with pytest.raises(RequestError, match=rf"{name}=.* is not supported; the only allowed value is {neutral}"):
        parse(input_ids=[1, 2], **{name: neutral + 2})


def test_text_longer_than_the_context_can_hold_is_refused_before_tokenizing():
    parse(text_input=b"a" * 60, max_tokens=4)
    with pytest.raises(RequestError, match=r"text_input has 65 bytes; at most 64 can fit the context of 64 tokens"):
        parse(text_input=b"a" * 65)


def test_missing_prompt_names_both_fields():
    with pytest.raises(RequestError, match="give exactly one of input_ids .* or text_input"):
        parse(max_tokens=4)
