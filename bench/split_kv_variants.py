"""Split-KV designs at the 40B's attention shapes (64 heads of 128, an FP8 cache, 1152 positions a row), the
partial states merged as the engine merges them, each launch replayed from a CUDA graph with the cache streamed
from HBM (bench/sweep.py) and checked against decode_attention.reference() first.

    python -m bench.split_kv_variants [--batches 16,1] [--output DIR]

Designs, each over BLOCK (32, 64, 128) x warps (2, 4) x stages (1, 3) x a register cap per thread (none, 96, 72;
Triton's maxnreg), at the plan's slices:
  engine  the engine's kernel (gptserve.engine.decode_attention): scores and values as fp32 sums in registers
  mma     scores and values through f16 MMAs, the query padded to 16 rows (15 of zeros), K and V widened to f16
Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse
import functools
import itertools

import torch

from gptserve.engine import decode_attention as da
from gptserve.engine.config import PRESETS

from . import header
from .sweep import relative_error, streamed_us, write_report

DESIGNS = ("engine", "mma")
BLOCKS, WARPS, STAGES, REGISTER_CAPS = (32, 64, 128), (2, 4), (1, 3), (None, 96, 72)


@functools.cache
def _mma_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def split_kv_mma_kernel(q_ptr, k_ptr, v_ptr, last_ptr, m_ptr, l_ptr, acc_ptr, scale,
                            stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                            BLOCK: tl.constexpr, D: tl.constexpr, NO_SCORE: tl.constexpr):
        # the engine kernel's slices and states; the two products are MMAs of [16, D] (row 0 the query) x [D, BLOCK]
        # and [16, BLOCK] (row 0 the weights) x [BLOCK, D]
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        last = tl.load(last_ptr + b)
        splits = tl.num_programs(2)
        per_split = ((last + BLOCK) // BLOCK + splits - 1) // splits * BLOCK
        length = tl.minimum(per_split, last + 1 - s * per_split)
        d = tl.arange(0, D)
        query_row = tl.arange(0, 16)[:, None] == 0  # [16, 1]
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d).to(tl.float32) * scale
        q16 = tl.where(query_row, q[None, :], 0.0).to(tl.float16)  # [16, D]
        m = -1.0e30
        total = 0.0
        acc = tl.zeros((16, D), tl.float32)
        cache = b * stride_kb + h * stride_kh
        for offset in range(0, length, BLOCK):
            p = s * per_split + offset + tl.arange(0, BLOCK)
            visible = p <= last
            kv = cache + p[:, None] * stride_ks + d[None, :]
            k = tl.load(k_ptr + kv, mask=visible[:, None], other=0.0).to(tl.float16)  # [BLOCK, D]
            v = tl.load(v_ptr + kv, mask=visible[:, None], other=0.0).to(tl.float16)
            scores = tl.dot(q16, tl.trans(k))  # [16, BLOCK], row 0 the query's
            score = tl.where(visible, tl.sum(tl.where(query_row, scores, 0.0), axis=0), NO_SCORE)
            m_new = tl.maximum(m, tl.max(score, axis=0))
            weight = tl.where(visible, tl.exp(score - m_new), 0.0)
            rescale = tl.exp(m - m_new)
            acc = acc * rescale + tl.dot(tl.where(query_row, weight[None, :], 0.0).to(tl.float16), v)
            total = total * rescale + tl.sum(weight, axis=0)
            m = m_new
        state = (b * tl.num_programs(1) + h) * tl.num_programs(2) + s
        tl.store(m_ptr + state, m)
        tl.store(l_ptr + state, total)
        tl.store(acc_ptr + state * D + d, tl.sum(tl.where(query_row, acc, 0.0), axis=0))

    return split_kv_mma_kernel


def partials(case, design: str, block: int, warps: int, stages: int, register_cap: int | None):
    """The partial states of one design and launch configuration, at the engine's plan of slices."""
    q, k, v, last = case
    rows, heads, dim = q.shape
    splits = da.plan(rows, heads, k.shape[2])
    cap = {} if register_cap is None else {"maxnreg": register_cap}
    if design == "engine":
        return da.launch(q, k, v, last, (splits, block, warps, stages), **cap)
    m = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    total = torch.empty_like(m)
    acc = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=q.device)
    _mma_kernel()[(rows, heads, splits)](
        q, k, v, last, m, total, acc, dim ** -0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        BLOCK=block, D=dim, NO_SCORE=da.NO_SCORE, num_warps=warps, num_stages=stages, **cap)
    return m, total, acc


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16,1")
    p.add_argument("--kv-len", type=int, default=1152)
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    cfg = PRESETS["gpt-large-40b"]
    report = {**header(), "kv_len": args.kv_len, "results": []}
    for batch in (int(b) for b in args.batches.split(",")):
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (batch, cfg.n_head, cfg.n_ctx, cfg.head_dim)
        k, v = ((torch.randn(shape, device="cuda", generator=gen) * 0.5).to(torch.float8_e4m3fn) for _ in range(2))
        q = torch.randn(batch, cfg.n_head, cfg.head_dim, device="cuda", generator=gen).to(torch.bfloat16)
        last = torch.full((batch,), args.kv_len - 1, dtype=torch.int64, device="cuda")
        case = (q, k, v, last)
        want = da.merge(*da.reference(q, k, v, last))
        cache_mb = 2 * batch * cfg.n_head * args.kv_len * cfg.head_dim / 1e6
        for config in itertools.product(DESIGNS, BLOCKS, WARPS, STAGES, REGISTER_CAPS):
            error = relative_error(da.merge(*partials(case, *config)), want)
            us = streamed_us(lambda c: partials(c, *config), case, streamed=(1, 2)) if error < 1e-2 else None
            report["results"].append({"batch": batch, "config": config, "error": error, "us": us})
            print(batch, config, f"error {error:.1e}", f"{us:.1f} us [{cache_mb / us:.2f} TB/s]" if us else "wrong",
                  flush=True)
    write_report(report, args.output, "split-kv-variants")


if __name__ == "__main__":
    main()
