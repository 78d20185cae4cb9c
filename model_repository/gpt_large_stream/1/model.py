"""Triton model gpt_large_stream: in-flight batching and streaming (gptserve/triton/inflight_model.py)."""
from gptserve.triton.inflight_model import InflightBatchingModel as TritonPythonModel  # noqa: F401
