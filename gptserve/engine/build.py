"""Resolve settings for this machine, then build the model: construct, load or initialise the weights, convert
to FP8 and place it on its device in its final dtype, one block at a time."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from . import checkpoint, fp8
from .config import PRESETS, ModelConfig
from .model import GPT

log = logging.getLogger("gptserve")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# attention_backend=auto: split-KV for models this narrow (gpt2-large: 1-5% faster than SDPA at batches 1, 2, 4 and
# 16, 5% slower at 8, runs 32-33; one decode graph per bucket instead of one per KV length: READY 18-23 s warm).
# decode_linears=auto, bf16: fused linears only for models this narrow, whose decode steps are bound by kernel
# count and latency (gpt2-large, 1280, where it was measured); a wide model's cuBLAS GEMVs already read HBM near
# the floor (the 40B, 8192: 96%). With FP8 weight-only every model's one-row step fuses: there the fused kernel
# reads FP8 weights at 3.3-3.9 TB/s on the 40B (run 26), as fast as the two-term split-K kernel that serves 2-16
# rows (run 39), without the kernels that make the two terms; the 40B's step is 1.72-1.74x bf16 (runs 31, 40),
# gpt2-large's 1.259 against 1.724 ms through the two terms (run 66)
NARROW_MAX_EMBD = 2048


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
    decode_linears: str  # torch, head, fused, by_batch (fused at batch 1, head at 2-16), one_row (fused at batch 1)
    attention_backend: str  # sdpa, flex or splitkv


def resolve(settings, device: str | None = None) -> Resolved:
    """settings: a gptserve.settings.ServingConfig; device overrides settings.device."""
    has_cuda = torch.cuda.is_available()
    name = device or settings.device
    if name == "auto":
        name = "cuda" if has_cuda else "cpu"
    if name == "cuda" and not has_cuda:
        raise ValueError("device=cuda but no CUDA GPU is visible")
    dev = torch.device(name)
    on_gpu = dev.type == "cuda"
    preset = settings.preset if settings.preset != "auto" else ("gpt2-large" if on_gpu else "tiny")
    model_cfg = PRESETS[preset]
    if settings.model_path:
        model_cfg = checkpoint.architecture(settings.model_path, model_cfg)
    dtype = _DTYPES.get(settings.dtype, torch.bfloat16 if on_gpu else torch.float32)
    compile_mode = settings.compile_mode
    if compile_mode == "auto":
        compile_mode = "reduce-overhead" if on_gpu else "none"
    if settings.attention_backend == "flex" and compile_mode != "none" and not on_gpu:
        raise ValueError(f"attention_backend=flex with compile_mode={compile_mode} needs a CUDA GPU (inductor has no "
                         "CPU lowering for it); use compile_mode=none or attention_backend=sdpa on a CPU")
    kv_dtype = dtype
    if settings.kv_cache_dtype == "fp8":
        if on_gpu:
            kv_dtype = torch.float8_e4m3fn
        else:
            log.info("kv_cache_dtype=fp8 needs a CUDA GPU; keeping the KV cache in %s on CPU", dtype)
    fp8_mode = fp8.resolve_mode(settings.fp8_mode, dev)
    decode_linears = settings.decode_linears
    if decode_linears == "auto":  # measured on the H200 with one compiled block: configuration.md
        decode_linears = auto_decode_linears(model_cfg, dtype, fp8_mode, on_gpu, settings.compile_region)
    fused = decode_linears != "torch"
    linears_ok = dtype in (torch.bfloat16, torch.float16) and fp8_mode in ("none", *fp8.WEIGHT_ONLY)
    if fused and on_gpu and not linears_ok:
        raise ValueError(f"decode_linears={settings.decode_linears} on a GPU needs dtype bfloat16 or float16 "
                         f"(got {dtype}) and fp8_mode none, weight-only or int8-weight-only (got {fp8_mode})")
    attention_backend = settings.attention_backend
    if attention_backend == "auto":  # measured on the H200: docs/configuration.md
        attention_backend = auto_attention_backend(model_cfg, on_gpu, kv_dtype)
    return Resolved(model_cfg, preset, dev, dtype, compile_mode, fp8_mode, kv_dtype, decode_linears,
                    attention_backend)


def auto_attention_backend(model_cfg: ModelConfig, on_gpu: bool, kv_dtype: torch.dtype) -> str:
    """attention_backend=auto: split-KV where it was measured to win (on a GPU, a narrow model, or an FP8 cache,
    which SDPA first widens whole: the 40B's attention 14x slower a layer, runs 52 and 59), else SDPA."""
    fp8_cache = kv_dtype == torch.float8_e4m3fn
    return "splitkv" if on_gpu and (model_cfg.n_embd <= NARROW_MAX_EMBD or fp8_cache) else "sdpa"


def auto_decode_linears(model_cfg: ModelConfig, dtype: torch.dtype, fp8_mode: str, on_gpu: bool,
                        compile_region: str) -> str:
    """decode_linears=auto: where the fused linears were measured to win (compile_region=step would also compile
    the whole step apart for more than 16 rows, where the fused LM head stops, and fused blocks lost under it in
    run 10)."""
    if not on_gpu or compile_region != "block" or dtype != torch.bfloat16:
        return "torch"
    if fp8_mode in fp8.WEIGHT_ONLY:
        return "one_row"
    return "by_batch" if fp8_mode == "none" and model_cfg.n_embd <= NARROW_MAX_EMBD else "torch"


INIT_STD = 0.02  # GPT-2's initializer_range


def _init_value(name: str, shape, n_layer: int, device, gen: torch.Generator, embedding_std: float) -> torch.Tensor:
    """GPT-2 initialisation of one tensor, always drawn in fp32 so every dtype gets the same weights."""
    if name.endswith("bias"):
        return torch.zeros(shape, device=device)
    if ".ln_" in name or name.startswith("ln_"):
        return torch.ones(shape, device=device)
    std = embedding_std if name in ("wte.weight", "wpe.weight") else INIT_STD
    if name.endswith("proj.weight"):
        std /= math.sqrt(2 * n_layer)
    return torch.empty(shape, device=device).normal_(0.0, std, generator=gen)


def build(r: Resolved, weights_seed: int = 0, model_path: str = "", fp8_mode: str | None = None,
          embedding_std: float = INIT_STD) -> GPT:
    """GPT(r.model) on r.device in r.dtype, from the checkpoint at model_path or a seeded init; with FP8 linears
    (blocks and LM head) when fp8_mode (default r.fp8_mode) is not "none". embedding_std: the seeded token and
    position embeddings' standard deviation (the blocks keep GPT-2's); larger ones (the accuracy benchmark's) give
    the tied LM head's logits clear gaps.

    Tensors are materialised one at a time and each block is converted as soon as it is filled, so at most one
    block is ever held in high precision: the 40B preset never needs a full bf16 copy.
    """
    fp8_mode = r.fp8_mode if fp8_mode is None else fp8_mode
    convert = fp8.Fp8Converter(fp8_mode) if fp8_mode != "none" else None
    with torch.device("meta"):
        model = GPT(r.model)
    state = None
    if model_path:
        file, _ = checkpoint.locate(model_path)
        state = checkpoint.checked_state_dict(file, model)
    gen = torch.Generator(device=r.device).manual_seed(weights_seed)

    def fill(prefix: str, module: torch.nn.Module):
        for pname, meta in list(module.named_parameters(recurse=False)):
            full = f"{prefix}{pname}"
            if state is not None:
                value = state[full]
            else:
                value = _init_value(full, meta.shape, r.model.n_layer, r.device, gen, embedding_std)
            setattr(module, pname, torch.nn.Parameter(value.to(device=r.device, dtype=r.dtype), requires_grad=False))

    for name, module in model.named_modules():
        if name == "lm_head" or name.startswith("blocks."):
            continue
        fill(f"{name}." if name else "", module)
    for i, block in enumerate(model.blocks):
        for name, module in block.named_modules():
            fill(f"blocks.{i}.{name}." if name else f"blocks.{i}.", module)
        if convert is not None:
            convert.block(block)
    model.lm_head.weight = model.wte.weight  # tied
    if convert is not None:  # the head gets its own FP8 copy; the embedding lookup stays in r.dtype
        model.lm_head = convert.linear(model.lm_head)
    return model.eval()
