"""Kernel designs for a decode step of 2-16 rows against FP8 weights, timed on the 40B's matrices, every call
replayed from a CUDA graph with the weights streamed from HBM (bench/sweep.py), each at the best of a small grid
and with its error against the product of the bf16 rows.

    python -m bench.fp8_rows_variants [--rows 16] [--designs ...] [--output DIR]

Designs (x [M <= 16, K] bf16, W [N, K] FP8 with per-row scales; partial sums over K slices, tiles of W brought in
by the tensor-memory accelerator):
  widened       W's tile widened to bf16, the MMA's right operand (as the engine's kernel was until run 36, which
                loaded W with plain loads: within 5% of this on every matrix)
  widened-swap  W's tile widened to bf16, the MMA's left operand (M = BLOCK_N rows of W, N = the 16 rows)
  one-term      x quantised to FP8 per row, FP8 x FP8 MMAs, W the left operand: nothing widened, x's error added
  two-term      the engine's kernel (gptserve.engine.fp8_matmul): x as two FP8 terms, two FP8 MMAs per tile
  two-term-unpromoted  two-term with the MMAs accumulating across the whole K slice (the engine's kernel until
                2026-12-01: Hopper's FP8 MMAs accumulate in fewer bits than fp32), not into fp32 once a tile
  two-term-promote-32  two-term with the MMAs' sums added into fp32 every 32 products (each MMA instruction)
  split-inside  two-term with the terms made in the kernel, per tile of x (scales per row and K block), from the
                bf16 rows: no quantisation kernels before it, and the MMAs' sums scaled into fp32 every tile
  terms-inside  two-term with the terms made in the kernel from the bf16 rows and split_rows' row scales (the
                compiled step would take only the row maxima before it)
  scaled_mm     cuBLAS's FP8 GEMM (torch._scaled_mm, x quantised per row, fast accumulation)
Needs a CUDA GPU of compute capability 9.0 and triton >= 3.3.
"""
from __future__ import annotations

import argparse
import functools

import torch

from gptserve.engine import fp8_matmul
from gptserve.engine.config import PRESETS
from gptserve.engine.fp8 import quantize_rows, split_rows
from gptserve.engine.fp8_matmul import join_terms

from . import header
from .rows_linear_sweep import layers, split_k_configs
from .sweep import fastest, relative_error, timed_configs, write_report


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def tile_kernel(x_ptr, w_desc, out_ptr, M, K, K_PER_SPLIT, stride_xm, stride_os, stride_om, N,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_LEFT: tl.constexpr, FP8_X: tl.constexpr):
        # W's tile widened to x's dtype unless FP8_X (x already FP8), the MMA's left operand if W_LEFT
        pid_n, split = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, 16)
        n0 = pid_n * BLOCK_N
        if W_LEFT:
            acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        else:
            acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
        for k in range(0, K_PER_SPLIT, BLOCK_K):
            k0 = split * K_PER_SPLIT + k
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K),
                        other=0.0)  # [16, BLOCK_K]
            w = w_desc.load([n0, k0])  # [BLOCK_N, BLOCK_K] fp8
            if not FP8_X:
                w = w.to(x.dtype)
            if W_LEFT:
                acc = tl.dot(w, tl.trans(x), acc)
            else:
                acc = tl.dot(x, tl.trans(w), acc)
        if not W_LEFT:
            acc = tl.trans(acc)  # [BLOCK_N, 16]
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + split * stride_os + rows[None, :] * stride_om + cols[:, None], acc,
                 mask=(rows[None, :] < M) & (cols[:, None] < N))

    @triton.jit
    def split_inside_kernel(x_ptr, w_desc, out_ptr, M, K, K_PER_SPLIT, stride_xm, stride_os, stride_om, N,
                            row_scale_ptr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROW_SCALE: tl.constexpr,
                            LO_RATIO: tl.constexpr):
        # two-term, with the terms made here from the bf16 rows, each tile of x: ROW_SCALE, at the rows' given
        # scales (as split_rows, lo in units LO_RATIO times finer), the MMAs chained; else at scales per row and K block
        # (two maxima a tile), the MMAs' sums scaled into an fp32 accumulator every tile
        pid_n, split = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, 16)
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        acc_lo = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
        if ROW_SCALE:
            row_scale = tl.load(row_scale_ptr + rows, mask=rows < M, other=1.0)
        for k in range(0, K_PER_SPLIT, BLOCK_K):
            k0 = split * K_PER_SPLIT + k
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < K),
                        other=0.0).to(tl.float32)  # [16, BLOCK_K]
            w = w_desc.load([n0, k0])  # [BLOCK_N, BLOCK_K] fp8
            if ROW_SCALE:
                hi = tl.clamp(x / row_scale[:, None], -448.0, 448.0).to(tl.float8e4nv)
                rest = x - hi.to(tl.float32) * row_scale[:, None]
                lo = tl.clamp(rest * (LO_RATIO / row_scale[:, None]), -448.0, 448.0).to(tl.float8e4nv)
                acc = tl.dot(w, tl.trans(hi), acc)
                acc_lo = tl.dot(w, tl.trans(lo), acc_lo)
            else:
                hi_scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-30) / 448.0
                hi = tl.clamp(x / hi_scale[:, None], -448.0, 448.0).to(tl.float8e4nv)
                rest = x - hi.to(tl.float32) * hi_scale[:, None]
                lo_scale = tl.maximum(tl.max(tl.abs(rest), axis=1), 1e-30) / 448.0
                lo = tl.clamp(rest / lo_scale[:, None], -448.0, 448.0).to(tl.float8e4nv)
                acc += tl.dot(w, tl.trans(hi)) * hi_scale[None, :] + tl.dot(w, tl.trans(lo)) * lo_scale[None, :]
        if ROW_SCALE:
            acc = (acc + acc_lo * (1.0 / LO_RATIO)) * row_scale[None, :]
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + split * stride_os + rows[None, :] * stride_om + cols[:, None], acc,
                 mask=(rows[None, :] < M) & (cols[:, None] < N))

    return tile_kernel, split_inside_kernel


def launch(design: str, x, w, config, row_scale=None):
    """Partial sums [SPLIT, M, N] fp32 of x @ w^T by one of this sweep's own designs: widened, widened-swap,
    one-term (x already FP8, the sums unscaled by its scale), split-inside, terms-inside (row_scale: split_rows'
    scale); config (BLOCK_N, BLOCK_K, warps, stages, SPLIT)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = x.shape
    n = w.shape[0]
    block_n, block_k, warps, stages, split = config
    k_per_split = -(-k // block_k // split) * block_k
    out = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    tile_kernel, split_inside_kernel = _kernels()
    grid = (-(-n // block_n), split)
    common = dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    args = (x, desc, out, m, k, k_per_split, x.stride(0), out.stride(0), out.stride(1), n)
    if design in ("split-inside", "terms-inside"):
        split_inside_kernel[grid](*args, row_scale, ROW_SCALE=row_scale is not None, LO_RATIO=fp8_matmul.LO_RATIO,
                                  **common)
    else:
        tile_kernel[grid](*args, W_LEFT=design != "widened", FP8_X=design == "one-term", **common)
    return out


def designs(x, w, w_scale, n: int, k: int) -> dict:
    """name: (run(case, config), case with the weights first, configs, the design's own result in fp32 (to check
    each config), the result the bf16 rows give (to measure its error)), every result unscaled by W's scales
    except scaled_mm's."""
    xq, x_scale = quantize_rows(x)
    hi, lo, scale = split_rows(x)
    exact = x.float() @ w.float().t()
    grid = split_k_configs(n, k)
    two_terms = join_terms(hi, lo, scale) @ w.float().t()
    promoted = {name: (
        lambda c, cfg, every=every: fp8_matmul.launch(hi, lo, scale, c[0], cfg, promote_every=every).sum(0),
        (w,), grid, two_terms, exact) for name, every in (("two-term-unpromoted", 0), ("two-term-promote-32", 32))}
    return {
        "widened": (lambda c, cfg: launch("widened", c[1], c[0], cfg).sum(0), (w, x), grid, exact, exact),
        "widened-swap": (lambda c, cfg: launch("widened-swap", c[1], c[0], cfg).sum(0), (w, x), grid, exact, exact),
        "one-term": (lambda c, cfg: launch("one-term", c[1], c[0], cfg).sum(0) * x_scale, (w, xq), grid,
                     (xq.float() * x_scale) @ w.float().t(), exact),
        "two-term": (lambda c, cfg: fp8_matmul.launch(hi, lo, scale, c[0], cfg).sum(0), (w,), grid, two_terms, exact),
        **promoted,
        "split-inside": (lambda c, cfg: launch("split-inside", x, c[0], cfg).sum(0), (w,), grid, exact, exact),
        "terms-inside": (lambda c, cfg: launch("terms-inside", x, c[0], cfg, scale).sum(0), (w,), grid, exact, exact),
        "scaled_mm": (lambda c, _: torch._scaled_mm(xq, c[0].t(), scale_a=x_scale, scale_b=w_scale.t().contiguous(),
                                                    out_dtype=torch.bfloat16, use_fast_accum=True),
                      (w,), [("cublas",)], (xq.float() * x_scale) @ (w.float() * w_scale).t(), exact * w_scale.t()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-large-40b")
    p.add_argument("--rows", default="16")
    p.add_argument("--designs", default="widened,widened-swap,one-term,two-term,split-inside,terms-inside,scaled_mm")
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {**header(), "preset": args.preset, "results": []}
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k, *_rest) in layers(args.preset).items():
            if name == "lm_head":  # the block's four matrices
                continue
            w, w_scale = quantize_rows((torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(torch.bfloat16))
            x = torch.randn(rows, k, device="cuda", generator=gen).to(torch.bfloat16)
            row = {"matrix": name, "rows": rows, "n": n, "k": k, "weight_mb": n * k / 1e6, "designs": {}}
            line = f"{name:10s} rows {rows:2d}:"
            for design, (run, case, grid, own, exact) in designs(x, w, w_scale, n, k).items():
                if design not in args.designs.split(","):
                    continue
                results = timed_configs(run, own, case, grid, streamed=(0,))
                best = fastest(results)
                error = relative_error(run(case, best[:-1]), exact) if best else None
                row["designs"][design] = {"configs": results, "best": best, "error_vs_bf16_rows": error}
                line += (f" {design} {best[-1]:6.1f} us {n * k / best[-1] / 1e6:4.2f} TB/s err {error:.1e} "
                         f"{best[:-1]};" if best else f" {design} none ({results[0][-1]});")
            report["results"].append(row)
            print(line, flush=True)
    write_report(report, args.output, f"fp8-rows-variants-{args.preset}")


if __name__ == "__main__":
    main()
