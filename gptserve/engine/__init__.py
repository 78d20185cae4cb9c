"""The engine layer: the GPT-2 decoder, its KV cache, sampling and the three verbs (prefill, decode_step,
sample) plus generate for a batch. torch only; it knows nothing of requests or Triton."""
from .config import BATCH_BUCKETS, PRESETS, ModelConfig
from .engine import GREEDY, Engine, Generation, Sampling, bucket_for

__all__ = ["BATCH_BUCKETS", "PRESETS", "ModelConfig", "Engine", "Generation", "Sampling", "GREEDY", "bucket_for"]
