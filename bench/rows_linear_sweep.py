"""Time the fused decode linear (gptserve.engine.rows_linear) against what torch launches for the same layer, on
gpt2-large's shapes, each call replayed from a CUDA graph (launch cost as in the compiled decode step). Each
timing cycles through copies of the weights that together pass 256 MB, so they come from HBM, as in a decode
step, not from the 50 MB L2 (run 11 in docs/benchmarks.md predates this and had small matrices L2-resident).

    python -m bench.rows_linear_sweep [--rows 1,16] [--output DIR]

Per (layer, rows): cuBLAS's linear alone, torch's whole chain (LayerNorm, linear, GELU, residual add: the kernels
the unfused step runs for that layer), the fused kernel at its plan, the fused kernel with its bias alone (no
LayerNorm, GELU or residual: the GEMV), and every configuration of a small grid. Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from gptserve.engine import rows_linear as rl

C = 1280  # gpt2-large: d 1280, d_ff 5120, vocab 50257
LAYERS = {  # name: (N, K, LayerNorm before, GELU after, residual added)
    "qkv": (3 * C, C, True, False, False),
    "attn_proj": (C, C, False, False, True),
    "fc": (4 * C, C, True, True, False),
    "mlp_proj": (C, 4 * C, False, False, True),
    "lm_head": (50257, C, True, False, False),
}
GRID = {  # rows path -> (BLOCK_N, BLOCK_K, num_warps, num_stages) candidates
    "one_row": list(itertools.product((4, 8, 16, 32), (256, 512, 1024, 2048), (4, 8), (2,))),
    "tile": list(itertools.product((16, 32, 64), (64, 128, 256), (4, 8), (3,))),
}


STREAMED_BYTES = 256 * 2**20  # weight copies per timing: well past the H200's 50 MB L2


def time_us(fn, case) -> float:
    """Microseconds of fn(case), averaged over copies of case's weight (argument 1) that pass STREAMED_BYTES."""
    from triton.testing import do_bench_cudagraph
    w = case[1]
    copies = [w] + [w.clone() for _ in range(-(-STREAMED_BYTES // (w.numel() * w.element_size())) - 1)]
    cases = [(case[0], c, *case[2:]) for c in copies]
    return do_bench_cudagraph(lambda: [fn(c) for c in cases], rep=30) * 1e3 / len(cases)


def layer_case(n, k, norm, gelu, residual, rows, gen):
    dev, dt = "cuda", torch.bfloat16
    w = (torch.randn(n, k, device=dev, generator=gen) / k ** 0.5).to(dt)
    b = torch.randn(n, device=dev, generator=gen).to(dt)
    ln_w = (torch.rand(k, device=dev, generator=gen) + 0.5).to(dt)
    ln_b = torch.randn(k, device=dev, generator=gen).to(dt)
    x = torch.randn(rows, k, device=dev, generator=gen).to(dt)
    res = torch.randn(rows, n, device=dev, generator=gen).to(dt) if residual else None
    return (x, w, None, b, ln_w if norm else None, ln_b if norm else None, res, n, gelu, 1e-5)


def torch_chain(args):
    x, w, _, b, ln_w, ln_b, res, n, gelu, eps = args
    h = F.layer_norm(x, (x.shape[1],), ln_w, ln_b, eps) if ln_w is not None else x
    y = F.linear(h, w, b)
    y = F.gelu(y, approximate="tanh") if gelu else y
    return y + res if res is not None else y


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16")
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "results": []}
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k, norm, gelu, residual) in LAYERS.items():
            case = layer_case(n, k, norm, gelu, residual, rows, gen)
            x, w, _, b = case[:4]
            bare = (x, w, None, b, None, None, None, n, False, 0.0)
            want = rl.reference(*case).float()
            row = {"layer": name, "rows": rows, "n": n, "k": k, "weight_mb": n * k * 2 / 1e6,
                   "cublas_linear_us": time_us(lambda c: F.linear(c[0], c[1], c[3]), case),
                   "torch_chain_us": time_us(torch_chain, case),
                   "fused_plan": list(rl.plan(rows, n, k)),
                   "fused_us": time_us(lambda c: rl.launch(*c), case),
                   "fused_bare_us": time_us(lambda c: rl.launch(*c), bare), "configs": []}
            for config in GRID["one_row" if rows == 1 else "tile"]:
                try:
                    got = rl.launch(*case, config=config).float()
                except Exception as exc:  # out of registers or shared memory: not a candidate
                    row["configs"].append([*config, None, type(exc).__name__])
                    continue
                if ((got - want).norm() / want.norm()).item() >= 1e-2:
                    row["configs"].append([*config, None, "wrong result"])
                    continue
                row["configs"].append([*config, time_us(lambda c: rl.launch(*c, config=config), case)])
            timed = [c for c in row["configs"] if c[4] is not None]
            best = min(timed, key=lambda c: c[4]) if timed else None
            row["best_config"] = best
            report["results"].append(row)
            print(f"{name:10s} rows {rows:2d}: cuBLAS {row['cublas_linear_us']:6.1f} us, torch chain "
                  f"{row['torch_chain_us']:6.1f}, fused {row['fused_us']:6.1f} (bare {row['fused_bare_us']:6.1f}), "
                  f"best {best}  [{row['weight_mb'] / best[4] if best else 0:.2f} TB/s]",
                  flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rows-linear-sweep-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
