"""gptserve: a GPT-2-architecture decoder engine for single-GPU serving behind Triton."""
from .config import BATCH_BUCKETS, PRESETS, ModelConfig, ServingConfig
from .engine import Engine, GenerationResult
from .requests import GenerationRequest, Limits, RequestError, parse_request

__all__ = [
    "BATCH_BUCKETS", "PRESETS", "ModelConfig", "ServingConfig", "Engine", "GenerationResult",
    "GenerationRequest", "Limits", "RequestError", "parse_request",
]
