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


def _kernel():
    from .rows_linear_kernel import rows_linear_kernel  # needs Triton: imported at the first launch
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
