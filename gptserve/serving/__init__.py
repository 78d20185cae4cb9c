"""The serving layer: requests (parsing, validation), the one rule that ends a sequence, static batches and the
in-flight scheduler with its delivery, cancellation and metric threads. Imports the engine, never Triton."""
from .events import Failure, Final, Token
from .requests import GenerationRequest, Limits, RequestError, parse_request
from .scheduler import Scheduler
from .static import GenerationResult, generate

__all__ = ["Failure", "Final", "Token", "GenerationRequest", "Limits", "RequestError", "parse_request", "Scheduler",
           "GenerationResult", "generate"]
