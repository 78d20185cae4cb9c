"""Shared pytest configuration.

Markers (declared in pyproject.toml):
  gpu          needs a CUDA GPU; skipped automatically when torch sees none
  integration  starts a real tritonserver (tests/integration/triton_server.py)
  slow         long-running
"""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _cuda_available() -> bool:
    try:
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)
