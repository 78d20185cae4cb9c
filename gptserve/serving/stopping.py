"""The one rule for ending a sequence and shaping its text, used by both models.

A Finisher takes a request's tokens one at a time and decides when it ends: at its end id (not part of the
output), at a stop word (the output keeps the token that completed it; the text ends just before the word) or
at max_tokens. It also says which text may be streamed now (an incomplete UTF-8 character, or a tail that could
still begin a stop word, is held back) and builds the final text (prompt first unless exclude_input_in_output).
"""
from __future__ import annotations

from .requests import GenerationRequest


class Finisher:
    def __init__(self, req: GenerationRequest, tokenizer):
        self.req = req
        self._tokenizer = tokenizer
        self._decoder = tokenizer.streaming()
        self.ids: list[int] = []  # output ids so far (end id excluded)
        self.text = ""  # output text so far
        self.reason: str | None = None  # "end_id", "stop_word" or "length" once finished
        self._streamed_ids = 0
        self._streamed_chars = 0

    @property
    def done(self) -> bool:
        return self.reason is not None

    def push(self, token: int) -> bool:
        """Take the next sampled token; True once the sequence has ended (later tokens are ignored)."""
        if self.done:
            return True
        if token == self.req.end_id:
            return self._end("end_id")
        self.ids.append(token)
        self._add_text(self._decoder.push([token]))
        if self.done:
            return True
        if len(self.ids) >= self.req.max_tokens:
            return self._end("length")
        return False

    def push_all(self, tokens: list[int]) -> bool:
        for token in tokens:
            if self.push(token):
                return True
        return False

    def _end(self, reason: str) -> bool:
        self.reason = reason
        self._add_text(self._decoder.flush())  # bytes held back as an incomplete character may end a stop word
        return True

    def _add_text(self, delta: str):
        """Append decoded text, cutting it at the first stop word it completes (which ends the sequence)."""
        if not delta:
            return
        searched = len(self.text)
        self.text += delta
        words = self.req.stop_words
        if not words or self.reason == "stop_word":
            return
        start = max(0, searched - max(len(w) for w in words) + 1)  # only where a new match can begin
        hits = [i for i in (self.text.find(w, start) for w in words) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.reason = "stop_word"

    def stream_delta(self) -> tuple[list[int], str]:
        """The ids and text not yet streamed that may go now (everything once the sequence has ended)."""
        ids = self.ids[self._streamed_ids:]
        upto = len(self.text) if self.done else len(self.text) - _held_back(self.text, self.req.stop_words)
        upto = max(upto, self._streamed_chars)
        text = self.text[self._streamed_chars: upto]
        self._streamed_ids, self._streamed_chars = len(self.ids), upto
        return ids, text

    def final_text(self) -> str:
        """The whole answer: the prompt's text first unless the request excludes it."""
        if self.req.exclude_input_in_output:
            return self.text
        prompt = self.req.prompt_text
        if prompt is None:
            prompt = self._tokenizer.decode(list(self.req.prompt_ids))
        return prompt + self.text


def _held_back(text: str, words) -> int:
    """Chars at the end of text that could begin a stop word: not streamed until that is decided."""
    if not words:
        return 0
    for k in range(min(len(text), max(len(w) for w in words) - 1), 0, -1):
        if any(w.startswith(text[-k:]) for w in words):
            return k
    return 0
