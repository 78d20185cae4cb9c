"""y = residual + gelu(norm(x) @ W^T * scale + bias): one linear layer of a decode step as one Triton kernel.

A decode step of 1 to 16 rows multiplies them by every weight matrix once, so it is bound by reading weights and by
launching kernels (steps over more rows stay on torch's linears). Torch runs LayerNorm, the GEMM (cuBLAS tiles and
split-K reductions sized for many rows), GELU and the residual add as separate kernels. Here each program owns
BLOCK_N output columns over all of K: it normalises the rows it reads (the optional LayerNorm: the rows are a few
KB that every program reads from L2), streams its weight rows (bf16, or FP8 or int8 widened in registers and scaled per
output column), then adds the bias, applies tanh-GELU and adds the residual before its one store. Every part is
optional. One row takes a multiply-and-sum path; 2 to 16 rows go through tl.dot on a 16-row tile. A decode step's
qkv linear also writes the rows' k and v into the KV caches (gptserve::rows_linear_to_cache), where the compiled
step ran a kernel a layer for it (gpt2-large at batch 1: 1.406 to 1.376 ms a step, run 78).

Registered as the custom op gptserve::rows_linear, so torch.compile and CUDA graphs take it as it is: on CUDA
tensors the kernel, on others the same arithmetic in torch (the CPU path, and the kernel's test reference).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .fp8_matmul import MAX_ROWS  # tl.dot's smallest M tile: this op's row limit too
from .kv_cache import write_cache

LARGE_N = 16384  # output columns from which a matrix (an LM head) streams from HBM whatever the cache holds
# rows wider than this are normalised before the kernel (by the compiler, fused with what precedes): every program
# normalising the rows it reads costs a wide row more than the launch it saves (the 40B's fc, d 8192: 127 us
# with the LayerNorm inside against 77 without, bench.rows_linear_sweep on an H200, run 25 in docs/benchmarks.md)
NORM_MAX_K = 2048


def plan(rows: int, n: int, k: int, one_byte: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for x [rows, k] against W [n, k] (FP8 or int8 when one_byte): per
    gpt2-large layer, the fastest configuration of bench.rows_linear_sweep on an H200, every matrix streamed from
    HBM (docs/benchmarks.md, run 13; the LM head's at one row from run 11, within 1% of run 13's best): a large
    matrix (the LM head) in small column blocks over short K steps, thousands of programs; the layer matrices in
    wide K steps."""
    if rows == 1:
        if min(n, k) >= 4096:
            return 8, 2048, 8, 2  # wide: every 40B matrix within 1% of its best, FP8 (run 26); bf16 unmeasured
        if one_byte:  # half bf16's bytes a tile: four warps stream them (gpt2-large FP8, run 66; qkv 6% off)
            return (32, 256, 4, 2) if n >= LARGE_N else ((8 if n >= 2048 else 4), 2048, 4, 2)
        if n >= LARGE_N:
            return 16, 256, 4, 2  # LM head
        if k > 2048:
            return 4, 1024, 8, 2  # mlp proj
        return (8 if n >= 2048 else 4), min(next_power_of_2(k), 2048), 8, 2  # qkv, attn proj, fc
    if n >= LARGE_N:
        return 64, 64, 4, 3
    if n >= 4096:
        return 64, 128, 8, 3  # fc
    return (32 if n >= 2048 else 16), min(next_power_of_2(k), 256), 4, 3  # qkv; attn and mlp proj


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rows_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, norm_w_ptr, norm_b_ptr, res_ptr, out_ptr,
                           k_cache_ptr, v_cache_ptr, pos_ptr,
                           M, N, K, stride_xm, stride_wn, stride_rm, stride_om, eps,
                           stride_cache_slot, stride_cache_head,
                           ROWS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                           HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GELU: tl.constexpr,
                           INT8_BITS: tl.constexpr, TO_CACHE: tl.constexpr,
                           HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # x: [M, K]; w: [>=N, K] (K contiguous); scale, bias: [>=N]; norm_w, norm_b: [K]; res, out: [M, N];
        # TO_CACHE (a qkv layer, N = 3C): k_cache, v_cache [slots, H, S, HEAD_DIM] (HEAD_DIM contiguous), pos [M]:
        # row r's position, in slot r
        rows = tl.arange(0, ROWS)  # ROWS: 1, or a tile of 16 for M in 2..16
        row_ok = rows < M
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        x_rows = x_ptr + rows[:, None] * stride_xm
        if HAS_NORM:  # each row's mean and 1/std over K, two passes in fp32 (as torch's LayerNorm, not E[x^2])
            total = tl.zeros((ROWS,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                total += tl.sum(tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K),
                                        other=0.0).to(tl.float32), axis=1)
            mean = total / K
            squares = tl.zeros((ROWS,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                inside = row_ok[:, None] & (ks[None, :] < K)
                xk = tl.load(x_rows + ks[None, :], mask=inside, other=0.0).to(tl.float32)
                centred = tl.where(inside, xk - mean[:, None], 0.0)
                squares += tl.sum(centred * centred, axis=1)
            rstd = 1.0 / tl.sqrt(squares / K + eps)
        acc = tl.zeros((ROWS, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            xk = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [ROWS, BLOCK_K]
            if HAS_NORM:  # normalised rows rounded to x's dtype, as LayerNorm's output would be
                gamma = tl.load(norm_w_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                beta = tl.load(norm_b_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                xn = (xk.to(tl.float32) - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]
                xk = xn.to(x_ptr.dtype.element_ty)
            w = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                        other=0.0)  # [BLOCK_N, BLOCK_K]
            if ROWS == 1:
                # int8 widened through its bits (integer add, one subtract) rather than int8-to-float conversions
                # at a quarter of the ALU's rate: 3% off the 40B's batch-1 step (run 73). 0x4B400000 is 1.5 * 2^23,
                # whose float unit is 1, so its bits + w read as 1.5 * 2^23 + w
                if INT8_BITS:
                    wf = (w.to(tl.int32) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
                else:
                    wf = w.to(tl.float32)
                acc += tl.sum(wf * xk.to(tl.float32), axis=1)[None, :]
            else:
                acc = tl.dot(xk, tl.trans(w.to(x_ptr.dtype.element_ty)), acc)
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GELU:  # tanh approximation (GPT-2's gelu_new); tanh(u) = 2 sigmoid(2u) - 1
            inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = acc * tl.sigmoid(2.0 * inner)
        both = row_ok[:, None] & col_ok[None, :]
        if HAS_RESIDUAL:
            acc += tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :], mask=both, other=0.0).to(tl.float32)
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], y, mask=both)
        if TO_CACHE:  # columns C..2C are the rows' k, 2C..3C their v: [H, HEAD_DIM] each, as the cache holds them
            width = N // 3
            part = cols // width  # 0 q, 1 k, 2 v
            head = (cols - part * width) // HEAD_DIM
            at = (rows[:, None] * stride_cache_slot + head[None, :] * stride_cache_head
                  + tl.load(pos_ptr + rows, mask=row_ok, other=0)[:, None] * HEAD_DIM + cols[None, :] % HEAD_DIM)
            tl.store(k_cache_ptr + at, y.to(k_cache_ptr.dtype.element_ty), mask=both & (part == 1)[None, :])
            tl.store(v_cache_ptr + at, y.to(v_cache_ptr.dtype.element_ty), mask=both & (part == 2)[None, :])

    return rows_linear_kernel


def launch(x, weight, scale, bias, norm_weight, norm_bias, residual, out_features: int, gelu: bool, eps: float,
           config: tuple[int, int, int, int] | None = None,
           cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """The kernel on any tensors Triton takes (CUDA, or CPU under TRITON_INTERPRET=1). config: (BLOCK_N, BLOCK_K,
    num_warps, num_stages) in place of the plan (bench.rows_linear_sweep tries several); cache: (k_cache, v_cache,
    positions) where a qkv layer also writes its rows' k and v (row r into slot r at positions[r])."""
    x = x.contiguous()
    m, k = x.shape
    assert m <= MAX_ROWS and weight.shape[0] >= out_features and weight.shape[1] == k and weight.stride(1) == 1, \
        (x.shape, weight.shape, out_features)
    assert scale is None or scale.shape == (weight.shape[0],), "one scale per weight row"
    assert residual is None or residual.shape == (m, out_features), (residual.shape, m, out_features)
    out = torch.empty((m, out_features), dtype=x.dtype, device=x.device)
    block_n, block_k, warps, stages = config or plan(m, out_features, k, one_byte=weight.element_size() == 1)
    if residual is not None:
        residual = residual.contiguous()
    k_cache, v_cache, positions = cache or (None, None, None)
    if cache is not None:
        positions = positions.contiguous()
        assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
        assert out_features == 3 * k_cache.shape[1] * k_cache.shape[3] and positions.shape == (m,), \
            (out_features, k_cache.shape, positions.shape)
    _kernel()[(-(-out_features // block_n),)](
        x, weight, scale, bias, norm_weight, norm_bias, residual, out, k_cache, v_cache, positions,
        m, out_features, k, x.stride(0), weight.stride(0), out_features, out_features, eps,
        *(k_cache.stride()[:2] if cache is not None else (0, 0)),
        ROWS=1 if m == 1 else MAX_ROWS, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        HAS_NORM=norm_weight is not None, HAS_RESIDUAL=residual is not None, GELU=gelu,
        INT8_BITS=weight.dtype == torch.int8, TO_CACHE=cache is not None,
        HEAD_DIM=k_cache.shape[3] if cache is not None else 1, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages)
    return out


def reference(x, weight, scale, bias, norm_weight, norm_bias, residual, out_features: int, gelu: bool, eps: float):
    """The kernel's arithmetic in torch: fp32 throughout, the normalised rows rounded to x's dtype."""
    h = x
    if norm_weight is not None:
        h = F.layer_norm(x.float(), (x.shape[-1],), norm_weight.float(), norm_bias.float(), eps).to(x.dtype)
    y = h.float() @ weight[:out_features].float().t()  # [M, N]
    if scale is not None:
        y = y * scale[:out_features].float()
    if bias is not None:
        y = y + bias[:out_features].float()
    if gelu:
        y = F.gelu(y, approximate="tanh")
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


@torch.library.custom_op("gptserve::rows_linear", mutates_args=())
def rows_linear(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor],
                residual: Optional[torch.Tensor], out_features: int, gelu: bool, eps: float) -> torch.Tensor:
    """x [M, K], M <= MAX_ROWS; weight [>=out_features, K] (bf16/fp16, or FP8 or int8 with scale [>=out_features]);
    residual [M, out_features] -> [M, out_features] in x's dtype."""
    if x.is_cuda:
        return launch(x, weight, scale, bias, norm_weight, norm_bias, residual, out_features, gelu, eps)
    return reference(x, weight, scale, bias, norm_weight, norm_bias, residual, out_features, gelu, eps)


@rows_linear.register_fake
def _(x, weight, scale, bias, norm_weight, norm_bias, residual, out_features, gelu, eps):
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("gptserve::rows_linear_to_cache", mutates_args=("k_cache", "v_cache"))
def rows_linear_to_cache(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], norm_weight: Optional[torch.Tensor],
                         norm_bias: Optional[torch.Tensor], out_features: int, eps: float, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """rows_linear of a qkv layer in a decode step, which also writes each row's k and v into the caches
    [slots, H, S, D] (row r into slot r at positions[r]): the write's own kernel saved (one a layer). -> qkv
    [M, 3C]."""
    if x.is_cuda:
        return launch(x, weight, scale, bias, norm_weight, norm_bias, None, out_features, False, eps,
                      cache=(k_cache, v_cache, positions))
    qkv = reference(x, weight, scale, bias, norm_weight, norm_bias, None, out_features, False, eps)
    m, (_, heads, _, head_dim) = x.shape[0], k_cache.shape
    _, k, v = qkv.view(m, 1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # 3x [M, H, 1, D]
    write_cache(k_cache, v_cache, torch.arange(m, device=x.device)[:, None], positions[:, None], k, v)
    return qkv


@rows_linear_to_cache.register_fake
def _(x, weight, scale, bias, norm_weight, norm_bias, out_features, eps, k_cache, v_cache, positions):
    return x.new_empty((x.shape[0], out_features))


def fused_linear(x: torch.Tensor, layer: torch.nn.Module, norm: torch.nn.LayerNorm | None = None,
                 residual: torch.Tensor | None = None, gelu: bool = False,
                 to_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """residual + gelu(layer(norm(x))) in one kernel, each part optional. x [M, K] with M <= MAX_ROWS; layer an
    nn.Linear or a weight-only FP8 or int8 linear (gptserve.engine.fp8, .int8); norm a LayerNorm with weight and
    bias; to_cache: (k_cache, v_cache, positions [M]) where a qkv layer writes its rows' k and v too (row r into
    slot r)."""
    if getattr(layer, "weight_only", False):
        weight, scale = layer.quantized_weight()
    elif isinstance(layer, torch.nn.Linear):
        weight, scale = layer.weight, None
    else:
        raise TypeError("fused_linear takes nn.Linear or a weight-only (FP8 or int8) linear, "
                        f"not {type(layer).__name__}")
    if norm is not None and (norm.weight is None or norm.bias is None):
        raise ValueError("fused_linear's LayerNorm needs its weight and bias")
    if norm is not None and x.shape[-1] > NORM_MAX_K:
        x, norm = norm(x), None
    norm_weight, norm_bias, eps = (None, None, 0.0) if norm is None else (norm.weight, norm.bias, norm.eps)
    if to_cache is not None:
        assert residual is None and not gelu, "a qkv layer has neither"
        return rows_linear_to_cache(x, weight, scale, layer.bias, norm_weight, norm_bias, layer.out_features, eps,
                                    *to_cache)
    return rows_linear(x, weight, scale, layer.bias, norm_weight, norm_bias, residual, layer.out_features, gelu, eps)
