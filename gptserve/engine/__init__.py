"""The engine layer: the GPT-2 decoder, its KV cache, sampling and the three verbs (prefill, decode_step,
sample) plus generate for a batch. torch only; it knows nothing of requests or Triton.

The architecture (config) imports without torch, so gptserve.settings stays pure Python for its readers (the
supervisor among them); the torch-backed names load on first use.
"""
from .config import BATCH_BUCKETS, PRESETS, ModelConfig

_FROM_ENGINE = ("Engine", "Generation", "Sampling", "GREEDY", "bucket_for")

__all__ = ["BATCH_BUCKETS", "PRESETS", "ModelConfig", *_FROM_ENGINE]


def __getattr__(name):
    if name in _FROM_ENGINE:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
