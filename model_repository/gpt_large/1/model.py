"""Triton model gpt_large: dynamic batching (gptserve/triton/static_model.py)."""
from gptserve.triton.static_model import StaticBatchingModel as TritonPythonModel  # noqa: F401
