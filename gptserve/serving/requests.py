"""One generation request: parsed from named numpy inputs and range-checked, field by field.

Every rejection is a RequestError whose message names the field and the allowed range.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

MAX_STOP_WORDS = 16
MAX_TEMPERATURE = 100.0


class RequestError(ValueError):
    """A bad request: answered with INVALID_ARG, never an INTERNAL error."""


# TensorRT-LLM-style inputs that clients (genai-perf, Triton's OpenAI frontend) send with a neutral value; any
# other value asks for behaviour this model does not have and is refused by name.
NEUTRAL_ONLY = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "beam_width": 1}


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    n_ctx: int
    end_id: int
    max_tokens_default: int
    max_tokens_limit: int
    allow_stream: bool = False

    @classmethod
    def of(cls, engine, allow_stream: bool = False) -> "Limits":
        """What requests may ask of this engine under its settings."""
        settings = engine.settings
        return cls(vocab_size=engine.cfg.vocab_size, n_ctx=engine.context, end_id=engine.end_id,
                   max_tokens_default=settings.max_tokens_default,
                   max_tokens_limit=min(settings.max_tokens_limit, engine.context - 1), allow_stream=allow_stream)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int = 0
    end_id: int = -1  # -1 = never stop on a token
    min_length: int = 0  # end_id is not generated before this many tokens
    stop_words: tuple[str, ...] = ()
    prompt_text: str | None = None
    exclude_input_in_output: bool = False
    stream: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _scalar(inputs: dict, name: str, default):
    """The single value of an optional [1, 1]-shaped input, or `default` when absent."""
    arr = inputs.get(name)
    if arr is None:
        return default
    arr = np.asarray(arr)
    if arr.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


def _int_in(inputs, name, default, lo, hi) -> int:
    value = _scalar(inputs, name, default)
    if not lo <= int(value) <= hi:
        raise RequestError(f"{name}={int(value)} is outside the allowed range [{lo}, {hi}]")
    return int(value)


def _bool(inputs, name) -> bool:
    return bool(_scalar(inputs, name, False))


def _text(value, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{name} is not valid UTF-8 (byte {exc.start})") from None
    return str(value)


def _prompt(inputs: dict, tokenizer, limits: Limits) -> tuple[tuple[int, ...], str | None]:
    has_ids, has_text = inputs.get("input_ids") is not None, inputs.get("text_input") is not None
    if has_ids == has_text:
        raise RequestError("give exactly one of input_ids (INT32 token ids) or text_input (BYTES)")
    if has_text:
        raw = _scalar(inputs, "text_input", b"")
        most = limits.n_ctx * tokenizer.max_token_bytes
        if len(raw) > most:  # decided before tokenizing: a huge text must not cost the server its time
            raise RequestError(f"text_input has {len(raw)} bytes; at most {most} can fit the context of "
                               f"{limits.n_ctx} tokens")
        text = _text(raw, "text_input")
        ids = tokenizer.encode(text)
        if not ids:
            raise RequestError("text_input is empty; it must hold at least 1 token")
        return tuple(ids), text
    arr = np.asarray(inputs["input_ids"])
    if arr.ndim == 2 and arr.shape[0] != 1:
        raise RequestError(f"input_ids must hold one sequence per request, got batch {arr.shape[0]}")
    ids = arr.reshape(-1)
    if ids.size == 0:
        raise RequestError("input_ids is empty; it must hold at least 1 token")
    bad = ids[(ids < 0) | (ids >= limits.vocab_size)]
    if bad.size:
        raise RequestError(f"input_ids holds {int(bad[0])}, outside the vocabulary [0, {limits.vocab_size - 1}]")
    return tuple(int(i) for i in ids), None


def parse_request(inputs: dict, tokenizer, limits: Limits) -> GenerationRequest:
    """Parse one request's named inputs (numpy arrays, batch dimension 1) into a GenerationRequest."""
    for name, arr in inputs.items():
        if arr is not None and np.asarray(arr).ndim >= 1 and np.asarray(arr).shape[0] > 1:
            raise RequestError(f"{name} has batch size {np.asarray(arr).shape[0]}; send one sequence per request")
    prompt_ids, prompt_text = _prompt(inputs, tokenizer, limits)
    max_tokens = _int_in(inputs, "max_tokens", limits.max_tokens_default, 1, limits.max_tokens_limit)
    if len(prompt_ids) + max_tokens > limits.n_ctx:
        raise RequestError(
            f"prompt of {len(prompt_ids)} tokens plus max_tokens={max_tokens} exceeds the context of "
            f"{limits.n_ctx} tokens; max_tokens must be at most {max(limits.n_ctx - len(prompt_ids), 0)}"
        )
    temperature = float(_scalar(inputs, "temperature", 0.0))
    if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise RequestError(f"temperature={temperature} is outside the allowed range [0, {MAX_TEMPERATURE}]")
    top_p = float(_scalar(inputs, "top_p", 1.0))
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise RequestError(f"top_p={top_p} is outside the allowed range (0, 1]")
    top_k = _int_in(inputs, "top_k", 0, 0, limits.vocab_size)
    seed = _scalar(inputs, "seed", None)
    seed = secrets.randbits(64) if seed is None else int(np.uint64(seed))
    end_id = _int_in(inputs, "end_id", limits.end_id, -1, limits.vocab_size - 1)
    min_length = _int_in(inputs, "min_length", 0, 0, max_tokens)
    for name, neutral in NEUTRAL_ONLY.items():
        value = _scalar(inputs, name, neutral)
        if float(value) != neutral:
            raise RequestError(f"{name}={value} is not supported; the only allowed value is {neutral}")
    stream = _bool(inputs, "stream")
    if stream and not limits.allow_stream:
        raise RequestError("stream=true is not supported by this model; use gpt_large_stream")
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        end_id=end_id,
        min_length=min_length,
        stop_words=_stop_words(inputs),
        prompt_text=prompt_text,
        exclude_input_in_output=_bool(inputs, "exclude_input_in_output"),
        stream=stream,
    )


def _stop_words(inputs: dict) -> tuple[str, ...]:
    arr = inputs.get("stop_words")
    if arr is None:
        return ()
    words = [_text(w, "stop_words") for w in np.asarray(arr).reshape(-1)]
    if len(words) > MAX_STOP_WORDS or any(not w for w in words):
        raise RequestError(f"stop_words must hold 1 to {MAX_STOP_WORDS} non-empty strings, got {len(words)}")
    return tuple(words)
