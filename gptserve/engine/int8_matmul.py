"""y = (xq @ wq^T) * x_scale * w_scale + bias for many rows: int8 weight-only's prefill GEMM as one Triton kernel.

Prefill quantises its rows to int8 (a scale per row) and multiplies them by the int8 weights (a scale per output
row). torch._int_mm does that on an H200 with an Ampere tensor-core kernel (cuBLAS's cutlass_80 int8 GEMM: 0.93 P
ops/s on the 40B's prefill, where FP8's GEMMs reach 1.44 PFLOP/s; run 75 in docs/benchmarks.md), writes int32
sums, and a second kernel reads them back to scale them. Here Triton's tl.dot on int8 tiles compiles to Hopper's
int8 warpgroup MMAs, which sum in int32 exactly, and each program scales its tile, adds the bias and stores it
once in the output's dtype. Tiles come through the tensor-memory accelerator; programs go in groups of GROUP_M
row blocks, so a group's programs share their weight tiles in L2. On the 40B's prefill (16 x 1024 rows) it runs
1.5-2.4x faster than torch._int_mm and its scaling pass, within 10% of FP8's linears (run 79).

Registered as the custom op gptserve::int8_matmul: on CUDA tensors the kernel, on others the same arithmetic in
torch (torch._int_mm, then the scales). Imports triton only when first used (GPU machines).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def int8_matmul_kernel(x_desc, w_desc, x_scale_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, stride_om,
                           HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # x: [M, K] int8, tiles [BLOCK_M, BLOCK_K]; w: [N, K] int8, tiles [BLOCK_N, BLOCK_K] (zeros past the
        # edges); x_scale: [M], w_scale: [N] fp32; bias: [N]; out: [M, N]
        pid = tl.program_id(0)
        blocks_m, blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group, in_group = pid // (GROUP_M * blocks_n), pid % (GROUP_M * blocks_n)
        first_m = group * GROUP_M
        group_m = min(blocks_m - first_m, GROUP_M)  # the last group may hold fewer row blocks
        m0 = (first_m + in_group % group_m) * BLOCK_M
        n0 = (in_group // group_m) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):  # exact: |x|, |w| <= 127 over K <= 2^17 stay inside int32
            acc = tl.dot(x_desc.load([m0, k0]), tl.trans(w_desc.load([n0, k0])), acc, out_dtype=tl.int32)
        rows = m0 + tl.arange(0, BLOCK_M)
        cols = n0 + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < M, cols < N
        y = acc.to(tl.float32) * tl.load(x_scale_ptr + rows, mask=row_ok, other=0.0)[:, None]
        y *= tl.load(w_scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    return int8_matmul_kernel


def plan(m: int) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages): Triton's Hopper FP8 GEMM tiles (the same bytes
    a tile as int8), 128 x 256 over K steps of 128, two warpgroups, three stages (144 KB of shared memory); 64 rows a
    block for a short prompt. Untuned: 1.15-1.2 P ops/s on the 40B's prefill matrices (run 79)."""
    return (64 if m <= 64 else 128), 256, 128, 8, 8, 3


def reference(xq, x_scale, wq, w_scale, bias, out_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's arithmetic in torch: int32 sums (torch._int_mm), then both scales and the bias in fp32."""
    return finish(torch._int_mm(xq, wq.t()).float() * x_scale[:, None] * w_scale[None, :], bias, out_features, dtype)


def finish(y, bias, out_features: int, dtype: torch.dtype) -> torch.Tensor:
    """y [M, N_padded] fp32 -> y + bias, its first out_features columns, in dtype."""
    if bias is not None:
        y = y + bias.float()
    return y[:, :out_features].to(dtype)


@torch.library.custom_op("gptserve::int8_matmul", mutates_args=())
def int8_matmul(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor], out_features: int, dtype: torch.dtype) -> torch.Tensor:
    """xq [M, K] int8 with x_scale [M]; wq [N, K] int8 (N >= out_features) with w_scale [N]; bias [N] or None ->
    [M, out_features] in dtype."""
    if xq.is_cuda:
        return launch(xq, x_scale, wq, w_scale, bias, out_features, dtype)
    return reference(xq, x_scale, wq, w_scale, bias, out_features, dtype)


@int8_matmul.register_fake
def _(xq, x_scale, wq, w_scale, bias, out_features, dtype):
    return xq.new_empty((xq.shape[0], out_features), dtype=dtype)


def launch(xq, x_scale, wq, w_scale, bias, out_features: int, dtype: torch.dtype,
           config: tuple[int, int, int, int, int, int] | None = None) -> torch.Tensor:
    """The kernel on any tensors Triton takes (CUDA, or CPU under TRITON_INTERPRET=1); config in place of the plan."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = xq.shape
    assert xq.dtype == wq.dtype == torch.int8 and wq.shape[1] == k and wq.shape[0] >= out_features, \
        (xq.shape, wq.shape, out_features)
    assert xq.is_contiguous() and wq.is_contiguous(), "the tensor-memory loads want rows of K contiguous bytes"
    assert x_scale.shape == (m,) and w_scale.shape == (wq.shape[0],)
    block_m, block_n, block_k, group_m, warps, stages = config or plan(m)
    out = torch.empty((m, out_features), dtype=dtype, device=xq.device)
    grid = (-(-m // block_m) * -(-out_features // block_n),)
    _kernel()[grid](TensorDescriptor.from_tensor(xq, [block_m, block_k]),
                    TensorDescriptor.from_tensor(wq, [block_n, block_k]), x_scale, w_scale, bias, out,
                    m, out_features, k, out.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m,
                    BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, num_warps=warps, num_stages=stages)
    return out
