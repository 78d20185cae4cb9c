"""Every serving setting, declared once: type, default, allowed values and one line of doc.

A config.pbtxt `parameters` entry of the same name overrides the default (every value is a string there).
ServingConfig.from_parameters is the one place where those strings become typed, range-checked settings;
docs/configuration.md's table is generated from these declarations (tests/unit/test_settings.py checks it).
Pure Python: every layer (engine, serving, Triton) imports it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .engine.config import BATCH_BUCKETS, PRESETS

BOTH, STATIC, IN_FLIGHT = "both", "gpt_large", "gpt_large_stream"


def setting(default, doc: str, *, choices: tuple = (), limits: tuple[int, int] | None = None,
            models: str = BOTH, parameter: bool = True):
    """A dataclass field carrying its declaration. limits: inclusive integer range; parameter=False: not settable
    from config.pbtxt parameters (it comes from elsewhere, e.g. Triton's own max_batch_size field)."""
    meta = {"doc": doc, "choices": choices, "limits": limits, "models": models, "parameter": parameter}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServingConfig:
    """How the model is served; the fields below are the whole list of settings."""

    preset: str = setting("auto", "Architecture when no checkpoint says otherwise; auto: gpt2-large on a GPU, "
                          "tiny on a CPU.", choices=("auto", *PRESETS))
    model_path: str = setting("", "Checkpoint directory (Hugging Face GPT-2) or state_dict file; empty: seeded "
                              "random weights. The MODEL_PATH environment variable overrides it.")
    tokenizer_path: str = setting("", "tokenizer.json; empty: the checkpoint's own, else a byte-level tokenizer.")
    device: str = setting("auto", "Where the engine runs; auto: the Triton instance's kind.",
                          choices=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", "Weights and activations; auto: bfloat16 on a GPU, float32 on a CPU.",
                         choices=("auto", "float32", "bfloat16", "float16"))
    compile_mode: str = setting("auto", "torch.compile mode of the decode step; reduce-overhead and max-autotune "
                                "replay each step from a CUDA graph (on a GPU, unless fp8_mode is transformer-engine), "
                                "default launches every kernel from Python; auto: reduce-overhead on a GPU, none on a "
                                "CPU.",
                                choices=("auto", "reduce-overhead", "default", "max-autotune", "none"))
    compile_region: str = setting("block", "What torch.compile compiles of the decode step: block (one transformer "
                                  "block, reused by every layer: a fast start) or step (the whole step: fusions "
                                  "across blocks, a compile n_layer times larger).", choices=("block", "step"))
    compile_cache_dir: str = setting("", "Directory for inductor's compile cache, kept across restarts (mount a "
                                     "volume there), and Triton's under it unless TRITON_CACHE_DIR is set; empty: "
                                     "their defaults under /tmp and ~/.triton.")
    kernel_tuning: str = setting("off", "Launch-configuration tuning of inductor's generated kernels at compile "
                                 "time; coordinate-descent times variants of each (gpt-fast's setting): on the H200 "
                                 "no faster decode, and retuned at every start (docs/benchmarks.md, runs 48-50).",
                                 choices=("off", "coordinate-descent"))
    attention_backend: str = setting("auto", "Attention kernel; splitkv: sdpa, but decode steps read the cache with "
                                     "split-KV attention (all SMs at batch 1, an FP8 cache read as it is, one CUDA "
                                     "graph per batch bucket for every KV length); auto: splitkv on a GPU for a model "
                                     "of n_embd <= 2048 or with kv_cache_dtype=fp8, else sdpa.",
                                     choices=("auto", "sdpa", "flex", "splitkv"))
    decode_linears: str = setting("auto", "Linear layers of a decode step of at most 16 rows; fused: each one "
                                  "Triton kernel with its LayerNorm, bias, GELU and residual add; head: only the "
                                  "final LayerNorm and LM head; by_batch: fused at batch 1, head at 2-16; one_row: "
                                  "fused at batch 1, torch above (on a GPU: bf16 or float16, fp8_mode none, "
                                  "weight-only or int8-weight-only; a CPU runs the same arithmetic in torch); auto, "
                                  "on a GPU in bfloat16 with compile_region block: by_batch for a model of n_embd <= "
                                  "2048 with fp8_mode none, one_row with a weight-only fp8_mode, else torch.",
                                  choices=("auto", "torch", "head", "fused", "by_batch", "one_row"))
    fp8_mode: str = setting("none", "FP8 linear layers (GPU, compute capability >= 8.9): weight-only (FP8 weights, "
                            "activations kept to bf16's precision), torch (FP8 activations too), "
                            "transformer-engine; auto: weight-only; int8-weight-only: int8 weights, the same bytes "
                            "and kernels at a third of FP8's rounding error (Hopper GPU, or CPU).",
                            choices=("none", "weight-only", "torch", "transformer-engine", "auto",
                                     "int8-weight-only"))
    prefill_graphs: str = setting("auto", "CUDA graphs for one-prompt prefill chunks (one replay instead of "
                                  "hundreds of eager kernel launches); auto: on when the decode step runs on CUDA "
                                  "graphs (reduce-overhead or max-autotune on a GPU), attention is not flex and FP8 "
                                  "is not transformer-engine.",
                                  choices=("auto", "off"))
    kv_cache_dtype: str = setting("auto", "KV-cache element type; fp8 halves its bytes (GPU only).",
                                  choices=("auto", "fp8"))
    max_batch_size: int = setting(16, "Requests per batch (gpt_large) or sequences generated together "
                                  "(gpt_large_stream, KV-cache slots): Triton's own max_batch_size field. The KV "
                                  "cache has a row per row of the next batch bucket "
                                  f"({', '.join(map(str, BATCH_BUCKETS))}): 16 for 9-16.",
                                  limits=(1, BATCH_BUCKETS[-1]), parameter=False)
    max_tokens_default: int = setting(16, "max_tokens of a request that does not set it.", limits=(1, 4096))
    max_tokens_limit: int = setting(1024, "Largest max_tokens a request may ask for.", limits=(1, 4096))
    max_seq_len: int = setting(0, "KV-cache positions per sequence (prompt + output); 0: the model's context.",
                               limits=(0, 65536))
    weights_seed: int = setting(0, "Seed of the random weights used when there is no checkpoint.",
                                limits=(0, 2**31 - 1))
    warmup_prompt_len: int = setting(32, "Prompt length of the start-up warm-up generations.", limits=(1, 4096))
    sync_every: int = setting(8, "Decode steps between host checks for finished sequences.", limits=(1, 256),
                              models=STATIC)
    queue_timeout_ms: int = setting(5000, "Longest wait for a generation slot inside the model; then "
                                    "UNAVAILABLE.", limits=(1, 600_000), models=IN_FLIGHT)
    max_queue_size: int = setting(64, "Requests that may wait for a slot in one model instance; a request "
                                  "beyond them is answered UNAVAILABLE at once.", limits=(0, 100_000),
                                  models=IN_FLIGHT)
    prefill_chunk: int = setting(512, "Prompt tokens prefilled per engine step, beside the running decodes; "
                                 "longer prompts are prefilled over several steps.", limits=(16, 8192),
                                 models=IN_FLIGHT)
    stream_interval: int = setting(4, "Fewest tokens in a streamed response (the first token and the final "
                                   "response excepted); tokens that pile up while the client is behind always "
                                   "leave together.", limits=(1, 1024), models=IN_FLIGHT)
    delivery_threads: int = setting(4, "Threads sending responses, so one slow client or IPC round trip never "
                                    "holds up the others or the engine (each response is one IPC round trip in "
                                    "Triton's python backend).", limits=(1, 64), models=IN_FLIGHT)
    cancel_check_ms: int = setting(20, "Period of the cancellation check of each running request (one IPC "
                                   "round trip each): a cancelled request frees its slot within about this long.",
                                   limits=(1, 10_000), models=IN_FLIGHT)
    drain_timeout_ms: int = setting(10000, "On unload, how long running sequences may still finish; the rest "
                                    "are answered UNAVAILABLE.", limits=(0, 600_000), models=IN_FLIGHT)
    step_delay_ms: int = setting(0, "Test hook: sleep after every engine step (slow generations on a fast "
                                 "CPU).", limits=(0, 1000), models=IN_FLIGHT)

    @classmethod
    def from_parameters(cls, params: dict[str, str], env: dict[str, str] | None = None,
                        **fixed: Any) -> "ServingConfig":
        """Build from string parameters: cast, range-check, reject unknown keys. MODEL_PATH in `env` wins over
        model_path; `fixed` are typed values from outside the parameters (Triton's max_batch_size)."""
        env = os.environ if env is None else env
        declared = {f.name: f for f in dataclasses.fields(cls)}
        settable = sorted(name for name, f in declared.items() if f.metadata["parameter"])
        unknown = sorted(set(params) - set(settable))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; allowed: {settable}")
        values = {key: _parse(declared[key], str(raw).strip()) for key, raw in params.items()}
        if env.get("MODEL_PATH"):
            values["model_path"] = env["MODEL_PATH"]
        for key, value in fixed.items():
            values[key] = _parse(declared[key], str(value))
        config = cls(**values)
        if config.max_tokens_default > config.max_tokens_limit:
            raise ValueError(f"parameter max_tokens_default={config.max_tokens_default} exceeds "
                             f"max_tokens_limit={config.max_tokens_limit}")
        return config

    @classmethod
    def from_triton_config(cls, model_config: dict) -> "ServingConfig":
        """From the model config JSON Triton gives initialize(): its parameters and its max_batch_size."""
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        return cls.from_parameters(params, max_batch_size=model_config["max_batch_size"])


def _parse(field: dataclasses.Field, raw: str):
    meta = field.metadata
    if meta["limits"] is not None:
        lo, hi = meta["limits"]
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"parameter {field.name}={raw!r} is not an integer in [{lo}, {hi}]") from None
        if not lo <= value <= hi:
            raise ValueError(f"parameter {field.name}={value} is outside [{lo}, {hi}]")
        return value
    if meta["choices"] and raw not in meta["choices"]:
        raise ValueError(f"parameter {field.name}={raw!r} is not one of {list(meta['choices'])}")
    return raw


def settings_table() -> str:
    """The Markdown table of every setting, as docs/configuration.md shows it."""
    rows = ["| Setting | Default | Allowed | Models | Meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(ServingConfig):
        meta = f.metadata
        allowed = (" ".join(f"`{c}`" for c in meta["choices"]) if meta["choices"]
                   else f"{meta['limits'][0]} to {meta['limits'][1]}" if meta["limits"] else "path")
        name = f"`{f.name}`" if meta["parameter"] else f"`{f.name}` (Triton field)"
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        rows.append(f"| {name} | {default} | {allowed} | {meta['models']} | {meta['doc']} |")
    return "\n".join(rows) + "\n"
