"""y = x @ (W_fp8 * scale)^T for few rows of x: the decode step's GEMM with FP8 (or int8) weights, one Triton kernel.

A decode step of 2 to 16 rows multiplies them by every weight matrix once: it is bound by reading the weights, so FP8
weights (1 byte each) halve its time only if they are read at HBM speed. Widening FP8 tiles to bf16 for a bf16 MMA
held every kernel tried to 2.2-2.9 TB/s on the 40B's matrices, while an FP8 x FP8 MMA read them at 3.1-4.1 TB/s
(bench.fp8_rows_variants on an H200, runs 36-40 in docs/benchmarks.md). So the rows come as two FP8 terms,
x ~= (hi + lo / LO_RATIO) * scale (fp8.split_rows: lo is hi's rounding error, quantised again), which keep about as
many bits of each element as bf16 does, and each weight tile meets both terms in FP8 MMAs.

Each program takes BLOCK_N rows of W (brought in by the tensor-memory accelerator) as the MMA's left operand and
the 16-row tiles of the two terms as its right ones (the MMA's M is W's rows: Hopper's FP8 MMA needs 64), their
sums added into fp32 accumulators once a tile, over one slice of K (split-K, so a small matrix still spreads over
every SM); the slices' partial sums are added by the caller, where the compiler fuses that sum with the weight
scale, the bias and the next operation.

With int8 weights (fp8_mode=int8-weight-only) the terms are int8 too (int8.split_rows) and the MMAs sum them in
int32, exactly.

Registered as the custom op gptserve::fp8_rows_matmul, so torch.compile and CUDA graphs take it as it is: on CUDA
tensors the kernel, on others the same sums in torch (a CPU's int8 path, and the tests' reference). Imports triton
only when first used (GPU machines).
"""
from __future__ import annotations

import functools

import torch

MAX_ROWS = 16  # the MMA's N tile: the op serves up to this many rows (larger decode steps: _scaled_mm)
# lo's unit is hi's / LO_RATIO: hi's rounding error is at most 16 of its units (e4m3 steps by 32 from 256 to 448),
# so lo stays within 256 of its own, inside e4m3's 448, with no second row maximum to take
LO_RATIO = 16
# int8 terms: hi's rounding error is at most half its unit, so lo in units 254 times finer stays within 127
INT8_LO_RATIO = 254
# Products of K an FP8 MMA sums in its own accumulator before the kernel adds them into fp32 (at most BLOCK_K: once
# a tile). Hopper's FP8 MMAs accumulate in fewer bits than fp32: chained across a whole K slice (0) they put the
# 40B's matrices at 1.5-3.2e-3 from the bf16 rows' product, once a tile at 6.3-6.6e-4 (the two terms' own error)
# at the same speed, every 32 products 1-3% slower (bench.fp8_rows_variants, H200, 2026-12-01)
PROMOTE_EVERY = 256
# Pipeline stages for a grid of 2 to 3 programs an SM: at 256-wide K tiles, four stages' shared memory leaves room
# for two programs an SM and three stages' for three, so three stages run such a grid in one wave where four take
# one and a half: the 40B's qkv (384 programs) 54.8 against 57.9 us with 3 stages, where its fc (512 programs, two
# waves either way) is 71.5 against 76.9 with 4 (bench.fp8_rows_variants, H200, runs 42 and 60)
ONE_WAVE_STAGES = 3


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def fp8_rows_matmul_kernel(hi_ptr, lo_ptr, scale_ptr, w_desc, out_ptr, M, N, K, K_PER_SPLIT, stride_xm,
                               stride_os, stride_om, LO_RATIO: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr, PROMOTE_EVERY: tl.constexpr, INT8: tl.constexpr):
        # hi, lo: [M, K] fp8 (int8), the rows' two terms; scale: [M] fp32, hi's unit; w: [N, K] fp8 (int8), tiles
        # [BLOCK_N, BLOCK_K] (zeros past N and K); out: [SPLIT, M, N] fp32 partial sums
        pid_n, split = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, 16)
        n0 = pid_n * BLOCK_N
        sums = tl.int32 if INT8 else tl.float32
        acc_hi = tl.zeros((BLOCK_N, 16), dtype=sums)
        acc_lo = tl.zeros((BLOCK_N, 16), dtype=sums)
        for k in range(0, K_PER_SPLIT, BLOCK_K):
            k0 = split * K_PER_SPLIT + k
            ks = k0 + tl.arange(0, BLOCK_K)
            inside = (rows[:, None] < M) & (ks[None, :] < K)
            at = rows[:, None] * stride_xm + ks[None, :]
            hi = tl.load(hi_ptr + at, mask=inside, other=0.0)  # [16, BLOCK_K]
            lo = tl.load(lo_ptr + at, mask=inside, other=0.0)
            w = w_desc.load([n0, k0])  # [BLOCK_N, BLOCK_K]
            if INT8:  # exact: |hi|, |lo|, |w| <= 127 over K <= 32768 stay far inside int32
                acc_hi = tl.dot(w, tl.trans(hi), acc_hi, out_dtype=tl.int32)  # [BLOCK_N, 16]
                acc_lo = tl.dot(w, tl.trans(lo), acc_lo, out_dtype=tl.int32)
            elif PROMOTE_EVERY:
                acc_hi = tl.dot(w, tl.trans(hi), acc_hi, max_num_imprecise_acc=PROMOTE_EVERY)  # [BLOCK_N, 16]
                acc_lo = tl.dot(w, tl.trans(lo), acc_lo, max_num_imprecise_acc=PROMOTE_EVERY)
            else:
                acc_hi = tl.dot(w, tl.trans(hi), acc_hi)  # [BLOCK_N, 16]
                acc_lo = tl.dot(w, tl.trans(lo), acc_lo)
        row_ok = rows < M
        acc = acc_hi.to(tl.float32) + acc_lo.to(tl.float32) * (1.0 / LO_RATIO)
        acc *= tl.load(scale_ptr + rows, mask=row_ok, other=0.0)[None, :]
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + split * stride_os + rows[None, :] * stride_om + cols[:, None], acc,
                 mask=row_ok[None, :] & (cols[:, None] < N))

    return fp8_rows_matmul_kernel


def plan(n: int, k: int, sms: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) for rows [M <= 16, k] against W [n, k]: 64 of W's rows
    (one warpgroup's MMA), K in steps of 256, SPLIT for one program per SM where K allows: the shape of the FP8
    designs' best on the 40B's matrices (runs 36-37). In the engine it took ~198 us a 40B block at 16 rows (run
    38's profile), where the sweeps' best of each matrix add up to 212-216. Four stages, or ONE_WAVE_STAGES where
    that fits a grid into one wave that four stages would not."""
    block_n, block_k = 64, min(256, max(32, 1 << (k - 1).bit_length()))
    split = splits(n, k, block_n, block_k, sms)
    programs = -(-n // block_n) * split
    # two or three programs an SM hold for 256-wide tiles only: narrower ones leave room for more
    one_wave_at_three = block_k == 256 and 2 * sms < programs <= 3 * sms
    return block_n, block_k, 4, ONE_WAVE_STAGES if one_wave_at_three else 4, split


def splits(n: int, k: int, block_n: int, block_k: int, programs: int) -> int:
    """SPLIT, the K slices (of whole blocks, all equal) that give at least `programs` programs where K allows."""
    k_blocks = -(-k // block_k)
    split = max(1, min(k_blocks, -(-programs // -(-n // block_n))))
    return -(-k_blocks // -(-k_blocks // split))


def lo_ratio(dtype: torch.dtype) -> int:
    """lo's unit in hi's units, for terms of this dtype (FP8 or int8)."""
    return INT8_LO_RATIO if dtype == torch.int8 else LO_RATIO


@torch.library.custom_op("gptserve::fp8_rows_matmul", mutates_args=())
def fp8_rows_matmul(hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Partial sums [SPLIT, M, N] (fp32) of x [M, K] @ weight [N, K]^T, M <= 16, x given as two terms of weight's
    dtype (fp8.split_rows, or int8.split_rows); their sum over dim 0 is the product with weight's values
    (unscaled). On a CPU, one slice."""
    if hi.is_cuda:
        return launch(hi, lo, scale, weight)
    return reference(hi, lo, scale, weight)[None]


def join_terms(hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The rows [M, K] two terms (fp8.split_rows, int8.split_rows) stand for, in fp32 (exact: each term has at
    most 8 significant bits)."""
    return (hi.float() + lo.float() / lo_ratio(hi.dtype)) * scale[:, None]


def reference(hi, lo, scale, weight) -> torch.Tensor:
    """The product the kernel's slices add up to, [M, N] fp32: the terms' rows times the weights."""
    return join_terms(hi, lo, scale) @ weight.float().t()


def launch(hi, lo, scale, weight, config: tuple[int, int, int, int, int] | None = None,
           promote_every: int = PROMOTE_EVERY):
    """The kernel's partial sums; config: (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) in place of the plan
    (bench.rows_linear_sweep tries several), promote_every in place of PROMOTE_EVERY (at most BLOCK_K;
    bench.fp8_rows_variants tries several)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = hi.shape
    n = weight.shape[0]
    assert m <= MAX_ROWS and lo.shape == hi.shape and hi.stride() == lo.stride() and hi.stride(1) == 1, \
        (hi.shape, lo.shape)
    assert scale.shape == (m,) and scale.is_contiguous() and weight.shape[1] == k and weight.is_contiguous()
    block_n, block_k, warps, stages, split = config or plan(n, k, _sms(hi.device))
    assert hi.dtype == weight.dtype, (hi.dtype, weight.dtype)
    k_per_split = -(-k // block_k // split) * block_k
    out = torch.empty((split, m, n), dtype=torch.float32, device=hi.device)
    grid = (-(-n // block_n), split)
    _kernel()[grid](hi, lo, scale, TensorDescriptor.from_tensor(weight, [block_n, block_k]), out, m, n, k,
                    k_per_split, hi.stride(0), out.stride(0), out.stride(1), LO_RATIO=lo_ratio(hi.dtype),
                    BLOCK_N=block_n, BLOCK_K=block_k, PROMOTE_EVERY=min(promote_every, block_k),
                    INT8=hi.dtype == torch.int8, num_warps=warps, num_stages=stages)
    return out


def _sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@fp8_rows_matmul.register_fake
def _(hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n, k = weight.shape[0], hi.shape[1]
    split = plan(n, k, _sms(hi.device))[4] if hi.is_cuda else 1
    return hi.new_empty((split, hi.shape[0], n), dtype=torch.float32)
