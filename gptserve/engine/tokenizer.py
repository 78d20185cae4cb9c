"""Text <-> token ids: a byte-level tokenizer needing no files, or a Hugging Face tokenizer.json.

Each tokenizer also makes streaming decoders: push(ids) returns the text those ids complete, holding back an
incomplete UTF-8 character; flush() returns what was held back. The concatenated deltas equal decode(all ids).
"""
from __future__ import annotations

import codecs
from pathlib import Path

UNKNOWN = "\ufffd"  # the text of an id the tokenizer can not represent (and of invalid UTF-8)
END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")  # special tokens that end a text


class ByteTokenizer:
    """Token id = UTF-8 byte value (0..255). Every other id decodes to U+FFFD, so it stays visible."""

    name = "bytes"
    vocab_size = 256
    end_id = None
    max_token_bytes = 1  # the most text one token can stand for

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        decoder = self.streaming()
        return decoder.push(ids) + decoder.flush()

    def streaming(self) -> "_ByteStream":
        return _ByteStream()


class _ByteStream:
    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        parts, run = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
                continue
            parts.append(self._utf8.decode(bytes(run), final=True) + UNKNOWN)  # an unrepresentable id ends a run
            run.clear()
        parts.append(self._utf8.decode(bytes(run)))
        return "".join(parts)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class HFTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.name = str(path)
        self.end_id = next((self._tok.token_to_id(t) for t in END_TOKENS if self._tok.token_to_id(t) is not None),
                           None)
        # byte-level vocabularies spell a byte as one character of 1-2 UTF-8 bytes: never fewer than the text's
        self.max_token_bytes = max(len(token.encode("utf-8")) for token in self._tok.get_vocab(True))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Ids past the tokenizer's vocabulary (the model's may be larger) become U+FFFD instead of vanishing."""
        parts, run = [], []
        for i in ids:
            if 0 <= i < self.vocab_size:
                run.append(i)
            else:
                parts.append(self._tok.decode(run, skip_special_tokens=True) + UNKNOWN)
                run = []
        parts.append(self._tok.decode(run, skip_special_tokens=True))
        return "".join(parts)

    def streaming(self) -> "_WindowStream":
        return _WindowStream(self)


class _WindowStream:
    """Decodes a short window of recent ids each time (not the whole output), as vLLM's detokenizer does: the
    window's first ids give context for merges and spaces, the text past them is new."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this are already in the returned text

    def push(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        seen = self._tok.decode(self._ids[self._prefix: self._read])
        text = self._tok.decode(self._ids[self._prefix:])
        if len(text) <= len(seen) or text.endswith(UNKNOWN):  # nothing new, or a character still incomplete
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(seen):]

    def flush(self) -> str:
        seen = self._tok.decode(self._ids[self._prefix: self._read])
        text = self._tok.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(seen):]


def load_tokenizer(tokenizer_path: str, model_path: str, vocab_size: int):
    """The configured tokenizer.json, else one beside the checkpoint, else bytes."""
    candidates = [Path(tokenizer_path)] if tokenizer_path else []
    if model_path and Path(model_path).is_dir():
        candidates.append(Path(model_path) / "tokenizer.json")
    for path in candidates:
        if path.is_file():
            tok = HFTokenizer(path)
            break
        if tokenizer_path and path == Path(tokenizer_path):
            raise ValueError(f"tokenizer_path {tokenizer_path}: file not found")
    else:
        tok = ByteTokenizer()
    if tok.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {tok.name} has {tok.vocab_size} tokens, the model only {vocab_size}")
    return tok
