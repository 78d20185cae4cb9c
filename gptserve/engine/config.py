"""The architecture (ModelConfig), its presets, and the batch buckets the decode step is compiled for."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)  # past 16, steps of half a power of two: less padding


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 architecture: learned positions, pre-LayerNorm, GELU MLP, tied LM head."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_ctx: int
    d_ff: int = 0  # 0 means 4 * n_embd
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def end_id(self) -> int:
        """Default end-of-text id: the last vocabulary entry, as in GPT-2 (50256)."""
        return self.vocab_size - 1

    def num_params(self) -> int:
        d, f = self.n_embd, self.d_ff
        per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        return self.vocab_size * d + self.n_ctx * d + self.n_layer * per_layer + 2 * d

    @classmethod
    def from_hf_config(cls, path: Path) -> "ModelConfig":
        """Architecture of a Hugging Face GPT-2 checkpoint, from its config.json."""
        try:
            hf = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read a GPT-2 config.json: {exc}") from exc
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{path}: model_type {hf.get('model_type')!r} is not gpt2")
        try:
            return cls(
                n_layer=int(hf["n_layer"]),
                n_embd=int(hf["n_embd"]),
                n_head=int(hf["n_head"]),
                vocab_size=int(hf["vocab_size"]),
                n_ctx=int(hf.get("n_positions", hf.get("n_ctx"))),
                d_ff=int(hf.get("n_inner") or 0),
                layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: missing GPT-2 field {exc}") from exc


PRESETS = {
    # Seconds to build on a CPU; vocabulary covers the 256 byte tokens plus an end id.
    "tiny": ModelConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_ctx=1024),
    "gpt2-large": ModelConfig(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257, n_ctx=2048),
    # The runbooks' "GPT-Large": 39.6B parameters.
    "gpt-large-40b": ModelConfig(
        n_layer=48, n_embd=8192, n_head=64, vocab_size=50304, n_ctx=2048, d_ff=32768
    ),
}
