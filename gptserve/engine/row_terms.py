"""Rows in FP8: one term (quantize_rows: weights, prefill activations) or two (split_rows: a decode step's rows for
the FP8 rows kernel, fp8_matmul.py), and the two terms of up to 16 rows, optionally of their LayerNorm, in one Triton
kernel (row_terms).

The FP8 rows kernel takes each row as hi + lo / LO_RATIO at one scale a row, the row's maximum. Left to the
compiler, a row's LayerNorm, its maximum and its terms become reductions of one program per row that loop over the
row two or three times: with 16 rows, 16 SMs each read their row again per pass, ~5-9 us a call, six calls a layer
(run 46's profile of the 40B's batch-16 step, docs/benchmarks.md). The kernel's one program a row holds its whole
row in registers (up to MAX_K elements), so it reads the row once and writes its terms once.

row_terms is registered as the custom op gptserve::row_terms, so torch.compile and CUDA graphs take it as it is: on
CUDA tensors the kernel, on others the same arithmetic in torch (the CPU path, and the kernel's test reference).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .fp8_matmul import LO_RATIO

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MAX_K = 32768  # a row in registers: 32 values a thread at 32 warps (the 40B's d_ff)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scale [M, 1]) with x ~= q * scale.

    The row maximum of |x| in one reduction (no |x| copy), and no clamp, since |x| / scale is at most FP8_MAX
    within fp32 rounding, which the cast rounds to FP8_MAX (tests/unit/test_fp8.py: the same bytes as with the
    clamp). Eager, that is still three passes over x; quantize_activations runs it as one compiled kernel."""
    scale = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x / scale).to(FP8), scale


def split_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (hi, lo: fp8 [M, K], scale: fp32 [M]) with x ~= (hi + lo / LO_RATIO) * scale.

    hi is x quantised per row (4 significant bits); lo is hi's rounding error in units LO_RATIO times finer, so the
    sum keeps about 8 significant bits of each element, as bf16 does (fp8_matmul.py multiplies both by FP8
    weights). One row maximum, no clamp (as quantize_rows)."""
    hi, scale = quantize_rows(x)
    lo = ((x.float() - hi.float() * scale) * (LO_RATIO / scale)).to(FP8)
    return hi, lo, scale.view(-1)


def join_rows(hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The rows split_rows' terms stand for, in fp32 (exact: each term has 4 significant bits)."""
    return (hi.float() + lo.float() / LO_RATIO) * scale[:, None]


def warps(k: int) -> int:
    """num_warps for rows of k: 16 values a thread from 2,048 elements up (4 warps below)."""
    return min(32, max(4, block(k) // 512))


def block(k: int) -> int:
    return 1 << max(0, (k - 1).bit_length())


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def row_terms_kernel(x_ptr, norm_w_ptr, norm_b_ptr, hi_ptr, lo_ptr, scale_ptr, K, stride_xm, eps,
                         LO_RATIO: tl.constexpr, FP8_MAX: tl.constexpr, HAS_NORM: tl.constexpr,
                         BLOCK: tl.constexpr):
        # x: [M, K]; norm_w, norm_b: [K]; hi, lo: [M, K] fp8 (contiguous); scale: [M] fp32. One program a row.
        row = tl.program_id(0)
        ks = tl.arange(0, BLOCK)
        inside = ks < K
        x = tl.load(x_ptr + row * stride_xm + ks, mask=inside, other=0.0)
        if HAS_NORM:  # mean, then the centred squares (as torch's LayerNorm), rounded to x's dtype
            xf = x.to(tl.float32)
            centred = tl.where(inside, xf - tl.sum(xf, axis=0) / K, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / K + eps)
            gamma = tl.load(norm_w_ptr + ks, mask=inside, other=0.0).to(tl.float32)
            beta = tl.load(norm_b_ptr + ks, mask=inside, other=0.0).to(tl.float32)
            x = (centred * rstd * gamma + beta).to(x_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        xf = x.to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(xf), axis=0), 1e-12) / FP8_MAX
        # hi's values in fp32: each x / scale rounded to FP8's 3 mantissa bits, to nearest even (below FP8's
        # smallest normal, 2^-6, to its subnormals' steps of 2^-9). Converting the FP8 hi back to fp32 instead gave
        # lo from the wrong elements' hi for half of each row (Triton 3.5, H200, this kernel; a lone round trip was
        # right), and made the terms' error 0.2
        unit = xf / scale
        bits = unit.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        subnormal = (unit + 24576.0) - 24576.0  # 1.5 * 2^14: fp32's steps there are 2^-9
        hi = tl.where(tl.abs(unit) < 0.015625, subnormal, normal)
        lo = ((xf - hi * scale) * (LO_RATIO / scale)).to(tl.float8e4nv, fp_downcast_rounding="rtne")
        tl.store(hi_ptr + row * K + ks, hi.to(tl.float8e4nv), mask=inside)
        tl.store(lo_ptr + row * K + ks, lo, mask=inside)
        tl.store(scale_ptr + row, scale)

    return row_terms_kernel


def launch(x, norm_weight, norm_bias, eps: float, num_warps: int | None = None):
    """The kernel on any tensors Triton takes (CUDA, or CPU under TRITON_INTERPRET=1); num_warps in place of
    warps(K) (bench.row_terms_sweep tries several)."""
    m, k = x.shape
    assert k <= MAX_K and x.stride(1) == 1, (x.shape, x.stride())
    hi = torch.empty((m, k), dtype=FP8, device=x.device)
    lo = torch.empty_like(hi)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    _kernel()[(m,)](x, norm_weight, norm_bias, hi, lo, scale, k, x.stride(0), eps, LO_RATIO=LO_RATIO,
                    FP8_MAX=FP8_MAX, HAS_NORM=norm_weight is not None, BLOCK=block(k),
                    num_warps=num_warps or warps(k))
    return hi, lo, scale


def reference(x, norm_weight, norm_bias, eps: float):
    """The kernel's arithmetic in torch: fp8.split_rows of x, or of its LayerNorm rounded to x's dtype."""
    if norm_weight is not None:
        x = F.layer_norm(x.float(), (x.shape[-1],), norm_weight.float(), norm_bias.float(), eps).to(x.dtype)
    return split_rows(x)


@torch.library.custom_op("gptserve::row_terms", mutates_args=())
def row_terms(x: torch.Tensor, norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor],
              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] (K <= MAX_K) -> (hi, lo: fp8 [M, K], scale: fp32 [M]) with y ~= (hi + lo / LO_RATIO) * scale, y
    being x, or its LayerNorm (norm_weight, norm_bias, eps) in x's dtype."""
    if x.is_cuda:
        return launch(x, norm_weight, norm_bias, eps)
    return reference(x, norm_weight, norm_bias, eps)


@row_terms.register_fake
def _(x, norm_weight, norm_bias, eps):
    m, k = x.shape
    return x.new_empty((m, k), dtype=FP8), x.new_empty((m, k), dtype=FP8), x.new_empty(m, dtype=torch.float32)
