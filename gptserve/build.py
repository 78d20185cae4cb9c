"""Resolve settings for this machine and build the model directly on its device, in its final dtype."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from . import checkpoint
from .config import PRESETS, ModelConfig, ServingConfig
from .model import GPT

log = logging.getLogger("gptserve")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Resolved:
    """Settings after 'auto' choices are made for the machine at hand."""

    model: ModelConfig
    preset: str
    device: torch.device
    dtype: torch.dtype
    compile_mode: str
    fp8_mode: str
    kv_cache_dtype: torch.dtype


def resolve(serving: ServingConfig, device: str | None = None) -> Resolved:
    has_cuda = torch.cuda.is_available()
    name = device or serving.device
    if name == "auto":
        name = "cuda" if has_cuda else "cpu"
    if name == "cuda" and not has_cuda:
        raise ValueError("device=cuda but no CUDA GPU is visible")
    dev = torch.device(name)
    on_gpu = dev.type == "cuda"
    preset = serving.preset if serving.preset != "auto" else ("gpt2-large" if on_gpu else "tiny")
    model_cfg = PRESETS[preset]
    if serving.model_path:
        model_cfg = checkpoint.architecture(serving.model_path, model_cfg)
    dtype = _DTYPES.get(serving.dtype, torch.bfloat16 if on_gpu else torch.float32)
    compile_mode = serving.compile_mode
    if compile_mode == "auto":
        compile_mode = "reduce-overhead" if on_gpu else "none"
    if serving.attention_backend == "flex" and compile_mode != "none" and not on_gpu:
        raise ValueError(f"attention_backend=flex with compile_mode={compile_mode} needs a CUDA GPU (inductor has no "
                         "CPU lowering for it); use compile_mode=none or attention_backend=sdpa on a CPU")
    fp8_mode = _resolve_fp8(serving.fp8_mode, dev)
    kv_dtype = dtype
    if serving.kv_cache_dtype == "fp8":
        if on_gpu:
            kv_dtype = torch.float8_e4m3fn
        else:
            log.info("kv_cache_dtype=fp8 needs a CUDA GPU; keeping the KV cache in %s on CPU", dtype)
    return Resolved(model_cfg, preset, dev, dtype, compile_mode, fp8_mode, kv_dtype)


def _resolve_fp8(mode: str, dev: torch.device) -> str:
    if mode == "none":
        return "none"
    if dev.type != "cuda":
        log.info("fp8_mode=%s needs a CUDA GPU; using fp8_mode=none on %s", mode, dev)
        return "none"
    from . import fp8

    if mode == "transformer-engine":
        fp8.require_transformer_engine()
        return mode
    if mode == "auto":
        if fp8.transformer_engine_available():
            return "transformer-engine"
        return "torch" if torch.cuda.get_device_capability(dev) >= (8, 9) else "none"
    if torch.cuda.get_device_capability(dev) < (8, 9):
        raise ValueError("fp8_mode=torch needs compute capability >= 8.9 (Ada or Hopper)")
    return mode


def _init_value(name: str, shape, n_layer: int, device, gen: torch.Generator) -> torch.Tensor:
    """GPT-2 initialisation of one tensor, always drawn in fp32 so every dtype gets the same weights."""
    if name.endswith("bias"):
        return torch.zeros(shape, device=device)
    if ".ln_" in name or name.startswith("ln_"):
        return torch.ones(shape, device=device)
    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
    return torch.empty(shape, device=device).normal_(0.0, std, generator=gen)


def build_model(
    cfg: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    weights_seed: int = 0,
    model_path: str = "",
    convert_block=None,
) -> GPT:
    """Materialise GPT(cfg) tensor by tensor on `device` in `dtype`, from a checkpoint or a seeded init.

    `convert_block(block)` runs after each block is filled (FP8 conversion), so at most one block is ever
    held in high precision: the 40B preset never needs a full bf16 copy.
    """
    with torch.device("meta"):
        model = GPT(cfg)
    state = None
    if model_path:
        file, _ = checkpoint.resolve(model_path)
        state = checkpoint.checked_state_dict(file, model)
    gen = torch.Generator(device=device).manual_seed(weights_seed)

    def fill(prefix: str, module: torch.nn.Module):
        for pname, meta in list(module.named_parameters(recurse=False)):
            full = f"{prefix}{pname}"
            value = state[full] if state is not None else _init_value(full, meta.shape, cfg.n_layer, device, gen)
            setattr(module, pname, torch.nn.Parameter(value.to(device=device, dtype=dtype), requires_grad=False))

    for name, module in model.named_modules():
        if name == "lm_head" or name.startswith("blocks."):
            continue
        fill(f"{name}." if name else "", module)
    for i, block in enumerate(model.blocks):
        for name, module in block.named_modules():
            fill(f"blocks.{i}.{name}." if name else f"blocks.{i}.", module)
        if convert_block is not None:
            convert_block(block)
    model.lm_head.weight = model.wte.weight
    return model.eval()
