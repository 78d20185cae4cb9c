"""y = x @ (W_fp8 * scale)^T for few rows of x: the decode step's GEMM with FP8 weights, one Triton kernel.

A decode step of 1 to 16 rows multiplies them by every weight matrix once: it is bound by reading the weights, so FP8
weights (1 byte each) can halve its time, but only if nothing reads them at a wider type. The kernel loads FP8
tiles, widens them in registers and accumulates in fp32; each program covers BLOCK_N output columns over one
slice of K (split-K, so a small matrix still spreads over every SM); the slices' partial sums are added by the
caller, where the compiler fuses that sum with the scale, the bias and the next operation.

Registered as the custom op gptserve::fp8_rows_matmul, so torch.compile and CUDA graphs take it as it is.
Imports triton only when first used (GPU machines); CPUs never call it.
"""
from __future__ import annotations

import functools

import torch

MAX_ROWS = 16  # tl.dot's smallest M tile: the op serves up to this many rows (larger decode steps: _scaled_mm)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def fp8_rows_matmul_kernel(x_ptr, w_ptr, out_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_wn, stride_os,
                               stride_om, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # x: [M, K] bf16/fp16; w: [N, K] fp8 (K contiguous); out: [SPLIT, M, N] fp32 partial sums
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, 16)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
        k_start = split * K_PER_SPLIT
        for k in range(0, K_PER_SPLIT, BLOCK_K):
            ks = k_start + k + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :],
                        mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)  # [16, BLOCK_K]
            w = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None],
                        mask=(cols[None, :] < N) & (ks[:, None] < K), other=0.0)  # [BLOCK_K, BLOCK_N]
            acc = tl.dot(x, w.to(x.dtype), acc)
        out = out_ptr + split * stride_os + rows[:, None] * stride_om + cols[None, :]
        tl.store(out, acc, mask=(rows[:, None] < M) & (cols[None, :] < N))

    return fp8_rows_matmul_kernel


def plan(n: int, k: int, sms: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) for x [M <= 16, k] against W [n, k]: within 8% of the
    best of bench.rows_linear_sweep's grid for every 40B matrix at 1 and 16 rows (run 26; a variant with the
    weight tile as the MMA's left operand never won there)."""
    block_n = 64 if n >= 8192 else 32
    block_k = 128 if k >= 4096 else 64
    return block_n, block_k, 4, 3, splits(n, k, block_n, block_k, 2 * sms)


def splits(n: int, k: int, block_n: int, block_k: int, programs: int) -> int:
    """SPLIT, the K slices (of whole blocks, all equal) that give at least `programs` programs where K allows."""
    k_blocks = -(-k // block_k)
    split = max(1, min(k_blocks, -(-programs // -(-n // block_n))))
    return -(-k_blocks // -(-k_blocks // split))


@torch.library.custom_op("gptserve::fp8_rows_matmul", mutates_args=())
def fp8_rows_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Partial sums [SPLIT, M, N] (fp32) of x [M, K] @ weight [N, K]^T, M <= 16; their sum over dim 0 is the
    unscaled product."""
    return launch(x, weight)


def launch(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int, int, int] | None = None):
    """The kernel's partial sums; config: (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) in place of the plan
    (bench.rows_linear_sweep tries several)."""
    m, k = x.shape
    n = weight.shape[0]
    assert m <= MAX_ROWS and weight.shape[1] == k and weight.stride(1) == 1, (x.shape, weight.shape)
    block_n, block_k, warps, stages, split = config or plan(n, k, _sms(x.device))
    k_per_split = -(-k // block_k // split) * block_k
    out = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    grid = (-(-n // block_n), split)
    _kernel()[grid](x, weight, out, m, n, k, k_per_split, x.stride(0), weight.stride(0), out.stride(0),
                    out.stride(1), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def _sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@fp8_rows_matmul.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n, k = weight.shape[0], x.shape[1]
    split = plan(n, k, _sms(x.device))[4]
    return x.new_empty((split, x.shape[0], n), dtype=torch.float32)
