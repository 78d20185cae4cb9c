"""The eager fp32 reference path: the same weights, full-sequence attention, no cache, no compiler."""
from __future__ import annotations

import dataclasses

import torch

from .build import build
from .model import GPT


def reference_model(engine) -> GPT:
    """An fp32 GPT with the engine's weights; the engine's own model when it already is eager fp32."""
    r = engine.resolved
    if r.dtype == torch.float32 and r.fp8_mode == "none" and r.compile_mode == "none":
        return engine.model
    s = engine.settings
    return build(dataclasses.replace(r, dtype=torch.float32), s.weights_seed, s.model_path, fp8_mode="none",
                 embedding_std=engine.embedding_std)


@torch.no_grad()
def reference_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] (fp32, on CPU) for every position of one sequence."""
    device = model.wte.weight.device
    return model.forward_reference(torch.tensor([ids], device=device))[0].float().cpu()
