"""Time split-KV decode attention (gptserve.engine.decode_attention) against what the SDPA path runs for the same
layer, at one preset's heads and head size, each call replayed from a CUDA graph with the cache read from HBM
(bench/sweep.py).

    python -m bench.decode_attention_sweep [--preset gpt2-large] [--cache bf16|fp8] [--batches 1,4,16]
                                           [--kv-len 1152] [--configs "13,64,2,3;20,64,2,3"] [--output DIR]

Per batch (every row at position kv_len - 1, as in the engine benchmark's decode): the SDPA path (the rows' caches
sliced to the KV-length bucket, widened when the cache is FP8, and scaled_dot_product_attention under the step's
mask), the split-KV kernel as the engine launches it (its plan, the slices merged in the kernel), and every
configuration of a grid (SPLITS, BLOCK, num_warps, num_stages: see decode_attention.launch; SPLITS half, once and
twice the plan's), each checked against plain attention before it is timed; --configs times the listed ones instead
of the grid. Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse
import itertools
import torch
import torch.nn.functional as F

from gptserve.engine import decode_attention as da
from gptserve.engine.config import PRESETS
from gptserve.engine.engine import KV_BLOCK

from . import header
from .sweep import fastest, relative_error, streamed_us, timed_configs, write_report

BLOCKS, WARPS, STAGES = (32, 64, 128), (2, 4, 8), (1, 3)


def grid(plan_splits: int) -> list:
    """The grid's configurations: SPLITS half, once and twice the plan's, each BLOCK, warps and stages."""
    splits = sorted({max(1, plan_splits // 2), plan_splits, 2 * plan_splits})
    return list(itertools.product(splits, BLOCKS, WARPS, STAGES))


def parse_configs(text: str) -> list:
    """--configs "SPLITS,BLOCK,WARPS,STAGES;..." -> launch configurations."""
    configs = []
    for entry in text.split(";"):
        values = tuple(int(v) for v in entry.split(","))
        if len(values) != 4:
            raise SystemExit(f"--configs entry {entry!r}: SPLITS,BLOCK,WARPS,STAGES")
        configs.append(values)
    return configs


def sdpa_path(args):
    """What Sdpa.attend runs per layer at decode: the caches sliced to the bucket (widened), the step's mask."""
    q, k, v, _, mask = args
    rows, bucket = q.shape[0], mask.shape[-1]
    k_all, v_all = (c[:rows, :, :bucket].to(q.dtype) for c in (k, v))
    return F.scaled_dot_product_attention(q[:, :, None], k_all, v_all, attn_mask=mask)[:, :, 0]


def split_kv(args, config=None):
    q, k, v, last, _ = args
    return da.launch_merged(q, k, v, last, config)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-large", choices=sorted(PRESETS))
    p.add_argument("--cache", default="bf16", choices=("bf16", "fp8"))
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--kv-len", type=int, default=1152, help="positions each row attends over (prompt 1024 + 128)")
    p.add_argument("--configs", help="SPLITS,BLOCK,WARPS,STAGES;... to time instead of the grid")
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    cfg = PRESETS[args.preset]
    heads, dim, capacity = cfg.n_head, cfg.head_dim, cfg.n_ctx
    cache_dtype = torch.float8_e4m3fn if args.cache == "fp8" else torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {**header(), "preset": args.preset, "cache": args.cache, "kv_len": args.kv_len,
              "heads": heads, "head_dim": dim, "cache_positions": capacity, "results": []}
    for batch in (int(b) for b in args.batches.split(",")):
        shape = (batch, heads, capacity, dim)
        k, v = ((torch.randn(shape, device="cuda", generator=gen) * 0.5).to(cache_dtype) for _ in range(2))
        q = torch.randn(batch, heads, dim, device="cuda", generator=gen).to(torch.bfloat16)
        last = torch.full((batch,), args.kv_len - 1, dtype=torch.int64, device="cuda")
        bucket = -(-args.kv_len // KV_BLOCK) * KV_BLOCK
        mask = torch.arange(bucket, device="cuda") <= last[:, None, None, None]  # [B, 1, 1, bucket]
        case = (q, k, v, last, mask)
        want = sdpa_path(case).float()
        cache_mb = 2 * batch * heads * args.kv_len * dim * k.element_size() / 1e6  # K and V the rows attend over
        plan_splits = da.plan(batch, heads, capacity)
        row = {"batch": batch, "plan_splits": plan_splits, "cache_mb_read": cache_mb,
               "sdpa_us": streamed_us(sdpa_path, case, streamed=(1, 2))}
        row["split_kv_plan_error"] = error = relative_error(split_kv(case), want)
        if error >= 1e-2:
            raise SystemExit(f"split-KV at its plan is wrong at batch {batch}: relative error {error:.1e}")
        row["split_kv_plan_us"] = streamed_us(split_kv, case, streamed=(1, 2))
        configs = parse_configs(args.configs) if args.configs else grid(plan_splits)
        row["configs"] = timed_configs(split_kv, want, case, configs, streamed=(1, 2))
        row["best_config"] = best = fastest(row["configs"])
        report["results"].append(row)
        print(f"batch {batch:2d}: {cache_mb:7.1f} MB of cache; SDPA path {row['sdpa_us']:7.1f} us "
              f"[{cache_mb / row['sdpa_us']:.2f} TB/s], split-KV plan ({plan_splits} slices) "
              f"{row['split_kv_plan_us']:7.1f}, best {best} [{cache_mb / best[-1] if best else 0:.2f} TB/s]",
              flush=True)
    write_report(report, args.output, f"decode-attention-sweep-{args.preset}-{args.cache}")


if __name__ == "__main__":
    main()
