"""The two frozen settings objects: the architecture (ModelConfig) and serving (ServingConfig).

ServingConfig.from_parameters is the one place where config.pbtxt parameters become typed settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

BATCH_BUCKETS = (1, 2, 4, 8, 16)


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

_CHOICES = {
    "preset": ("auto", *PRESETS),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile_mode": ("auto", "reduce-overhead", "default", "max-autotune", "none"),
    "attention_backend": ("sdpa", "flex"),
    "fp8_mode": ("none", "torch", "transformer-engine", "auto"),
    "kv_cache_dtype": ("auto", "fp8"),
}
_INT_RANGES = {
    "max_batch_size": (1, 16),
    "max_tokens_default": (1, 4096),
    "max_tokens_limit": (1, 4096),
    "weights_seed": (0, 2**31 - 1),
    "warmup_prompt_len": (1, 4096),
    "sync_every": (1, 256),
    "max_queue_size": (1, 4096),
    "max_seq_len": (0, 65536),
    "queue_timeout_ms": (1, 600_000),
    "prefill_chunk": (16, 8192),
    "drain_timeout_ms": (0, 600_000),
    "step_delay_ms": (0, 1000),
}


@dataclass(frozen=True)
class ServingConfig:
    """How the model is served. Every field is a config.pbtxt parameter of the same name."""

    preset: str = "auto"
    model_path: str = ""
    tokenizer_path: str = ""
    device: str = "auto"
    dtype: str = "auto"
    compile_mode: str = "auto"
    attention_backend: str = "sdpa"
    fp8_mode: str = "none"
    kv_cache_dtype: str = "auto"
    max_batch_size: int = 16
    max_tokens_default: int = 16
    max_tokens_limit: int = 1024
    max_seq_len: int = 0  # KV-cache positions per slot (prompt + output); 0 = the model's context
    weights_seed: int = 0
    warmup_prompt_len: int = 32
    sync_every: int = 8  # decode steps between host checks for finished rows
    max_queue_size: int = 64  # in-flight model only: waiting requests beyond running ones
    queue_timeout_ms: int = 5000  # in-flight model only
    prefill_chunk: int = 512  # in-flight model only: prompt tokens prefilled per engine iteration
    drain_timeout_ms: int = 10000  # in-flight model only: finalize() waits this long for running sequences
    step_delay_ms: int = 0  # in-flight model only: test hook, a sleep after every decode step

    @classmethod
    def from_parameters(cls, params: dict[str, str], env: dict[str, str] | None = None) -> "ServingConfig":
        """Build from string parameters: cast, range-check, reject unknown keys. MODEL_PATH env wins."""
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; allowed: {sorted(fields)}")
        values: dict[str, object] = {}
        for key, raw in params.items():
            raw = str(raw).strip()
            if key in _INT_RANGES:
                lo, hi = _INT_RANGES[key]
                try:
                    value = int(raw)
                except ValueError:
                    raise ValueError(f"parameter {key}={raw!r} is not an integer in [{lo}, {hi}]") from None
                if not lo <= value <= hi:
                    raise ValueError(f"parameter {key}={value} is outside [{lo}, {hi}]")
                values[key] = value
            elif key in _CHOICES:
                if raw not in _CHOICES[key]:
                    raise ValueError(f"parameter {key}={raw!r} is not one of {list(_CHOICES[key])}")
                values[key] = raw
            else:
                values[key] = raw
        if env.get("MODEL_PATH"):
            values["model_path"] = env["MODEL_PATH"]
        config = cls(**values)
        if config.max_tokens_default > config.max_tokens_limit:
            raise ValueError(
                f"parameter max_tokens_default={config.max_tokens_default} exceeds "
                f"max_tokens_limit={config.max_tokens_limit}"
            )
        return config

    @staticmethod
    def triton_parameters(model_config: dict) -> dict[str, str]:
        """The string parameters of a Triton model config (the JSON given to initialize())."""
        return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
