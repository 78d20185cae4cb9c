"""Text <-> token ids: a byte-level tokenizer needing no files, or a Hugging Face tokenizer.json."""
from __future__ import annotations

from pathlib import Path


class ByteTokenizer:
    """Token id = UTF-8 byte value (0..255). Ids above 255 (end id, unused vocabulary) decode to nothing."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    name = "tokenizer.json"

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.name = str(path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


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


class IncrementalDecoder:
    """Text deltas for streaming: holds back output while it ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, new_ids: list[int], final: bool = False) -> str:
        self._ids.extend(new_ids)
        text = self._tok.decode(self._ids)
        if not final and text.endswith("\ufffd"):
            return ""
        delta, self._emitted = text[self._emitted :], len(text)
        return delta
