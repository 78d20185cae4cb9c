"""Time the fused decode linear (gptserve.engine.rows_linear) against what torch launches for the same layer, on
one preset's shapes, each call replayed from a CUDA graph (launch cost as in the compiled decode step). Each
timing cycles through copies of the weights that together pass 256 MB, so they come from HBM, as in a decode
step, not from the 50 MB L2 (run 11 in docs/benchmarks.md predates this and had small matrices L2-resident).

    python -m bench.rows_linear_sweep [--preset gpt2-large] [--weights bf16|fp8] [--rows 1,16] [--output DIR]

Per (layer, rows): cuBLAS's bf16 linear alone (cublas_linear_us), torch's whole chain (LayerNorm, linear, GELU,
residual add: the kernels the unfused step runs for that layer), the fused kernel at its plan, the fused kernel
with its bias alone (no LayerNorm, GELU or residual: the GEMV), and every configuration of a small grid. With
--weights fp8 the weights are FP8 with per-row scales (fp8_mode=weight-only), torch's chain is left out, and the
split-K FP8 kernel (fp8_matmul.py, what weight-only runs under torch's linears) is timed at its plan and over its
own grid. Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse
import itertools
import torch
import torch.nn.functional as F

from gptserve.engine import fp8_matmul
from gptserve.engine import rows_linear as rl
from gptserve.engine.config import PRESETS
from gptserve.engine.fp8 import quantize_rows, split_rows
from gptserve.engine.fp8_matmul import join_terms

from . import header
from .sweep import fastest, streamed_us, timed_configs, write_report


def layers(preset: str) -> dict:
    """name: (N, K, LayerNorm before, GELU after, residual added) of one block and the LM head."""
    cfg = PRESETS[preset]
    c, f = cfg.n_embd, cfg.d_ff
    return {"qkv": (3 * c, c, True, False, False), "attn_proj": (c, c, False, False, True),
            "fc": (f, c, True, True, False), "mlp_proj": (c, f, False, False, True),
            "lm_head": (cfg.vocab_size, c, True, False, False)}


GRIDS = {  # (preset, rows path) -> (BLOCK_N, BLOCK_K, num_warps, num_stages) candidates
    ("gpt2-large", "one_row"): list(itertools.product((4, 8, 16, 32), (256, 512, 1024, 2048), (4, 8), (2,))),
    ("gpt2-large", "tile"): list(itertools.product((16, 32, 64), (64, 128, 256), (4, 8), (3,))),
    # wide matrices (d 8192): fewer, deeper candidates, each compiled per layer
    ("gpt-large-40b", "one_row"): list(itertools.product((8, 16, 32), (1024, 2048), (8,), (2, 3))),
    ("gpt-large-40b", "tile"): [(32, 256, 4, 3), (64, 256, 4, 3)],  # the split-K kernel serves these rows
}
SPLIT_K_GRID = list(itertools.product((64, 128), (128, 256), (4,), (3, 4, 5)))  # fp8_matmul, per programs target
SPLIT_K_WAVES = (1, 2)  # programs: this many per SM, where K has the blocks to split into


def layer_case(n, k, norm, gelu, residual, rows, gen, fp8: bool):
    dev, dt = "cuda", torch.bfloat16
    w = (torch.randn(n, k, device=dev, generator=gen) / k ** 0.5).to(dt)
    scale = None
    if fp8:
        w, scale = quantize_rows(w)
        scale = scale.view(-1)
    b = torch.randn(n, device=dev, generator=gen).to(dt)
    ln_w = (torch.rand(k, device=dev, generator=gen) + 0.5).to(dt)
    ln_b = torch.randn(k, device=dev, generator=gen).to(dt)
    x = torch.randn(rows, k, device=dev, generator=gen).to(dt)
    res = torch.randn(rows, n, device=dev, generator=gen).to(dt) if residual else None
    return (x, w, scale, b, ln_w if norm else None, ln_b if norm else None, res, n, gelu, 1e-5)


def torch_chain(args):
    x, w, _, b, ln_w, ln_b, res, n, gelu, eps = args
    h = F.layer_norm(x, (x.shape[1],), ln_w, ln_b, eps) if ln_w is not None else x
    y = F.linear(h, w, b)
    y = F.gelu(y, approximate="tanh") if gelu else y
    return y + res if res is not None else y


def sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def split_k_configs(n: int, k: int) -> list:
    """fp8_matmul launch configurations: the grid at each programs target, each with its SPLIT."""
    return sorted({(bn, bk, w, s, fp8_matmul.splits(n, k, bn, bk, waves * sms()))
                   for bn, bk, w, s in SPLIT_K_GRID for waves in SPLIT_K_WAVES})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-large", choices=sorted({p for p, _ in GRIDS}))
    p.add_argument("--weights", default="bf16", choices=("bf16", "fp8"))
    p.add_argument("--rows", default="1,16")
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    fp8 = args.weights == "fp8"
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {**header(), "preset": args.preset, "weights": args.weights, "results": []}
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k, norm, gelu, residual) in layers(args.preset).items():
            # the layer as fused_linear launches it: a wide row's LayerNorm runs before, in the compiled step
            case = layer_case(n, k, norm and k <= rl.NORM_MAX_K, gelu, residual, rows, gen, fp8)
            x, w, scale, b = case[:4]
            bf16 = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(torch.bfloat16)
            bare = (x, w, scale, b, None, None, None, n, False, 0.0)
            want = rl.reference(*case).float()
            row = {"layer": name, "rows": rows, "n": n, "k": k, "weight_mb": w.numel() * w.element_size() / 1e6,
                   "cublas_linear_us": streamed_us(lambda c: F.linear(c[0], c[1], c[3]), (x, bf16, None, b)),
                   "fused_plan": list(rl.plan(rows, n, k, fp8)),
                   "fused_us": streamed_us(lambda c: rl.launch(*c), case),
                   "fused_bare_us": streamed_us(lambda c: rl.launch(*c), bare)}
            if not fp8:
                row["torch_chain_us"] = streamed_us(torch_chain, case)
            grid = GRIDS[(args.preset, "one_row" if rows == 1 else "tile")]
            row["configs"] = timed_configs(lambda c, config: rl.launch(*c, config=config), want, case, grid)
            row["best_config"] = best = fastest(row["configs"])
            line = (f"{name:10s} rows {rows:2d}: cuBLAS bf16 {row['cublas_linear_us']:7.1f} us, "
                    + (f"torch chain {row['torch_chain_us']:7.1f}, " if not fp8 else "")
                    + f"fused {row['fused_us']:7.1f} (bare {row['fused_bare_us']:7.1f}), best {best} "
                    f"[{row['weight_mb'] / best[-1] if best else 0:.2f} TB/s]")
            if fp8:  # the split-K kernel, bare: its partial sums, summed and scaled by the caller
                hi, lo, scale = split_rows(x)
                bare_want = join_terms(hi, lo, scale) @ w.float().t()
                split_k = lambda c, config: fp8_matmul.launch(hi, lo, scale, c[1], config).sum(0)  # noqa: E731
                row["split_k_plan"] = list(fp8_matmul.plan(n, k, sms()))
                row["split_k_us"] = streamed_us(lambda c: fp8_matmul.launch(hi, lo, scale, c[1]).sum(0), case)
                row["split_k_configs"] = timed_configs(split_k, bare_want, case, split_k_configs(n, k))
                row["split_k_best"] = sk = fastest(row["split_k_configs"])
                line += (f"; split-K plan {row['split_k_us']:7.1f}, best {sk} "
                         f"[{row['weight_mb'] / sk[-1] if sk else 0:.2f} TB/s]")
            report["results"].append(row)
            print(line, flush=True)
    write_report(report, args.output, f"rows-linear-sweep-{args.preset}-{args.weights}")


if __name__ == "__main__":
    main()
