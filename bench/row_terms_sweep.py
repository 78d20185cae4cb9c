"""Time the row-terms kernel (gptserve.engine.row_terms) against what the compiler makes of the same work, at one
preset's widths, each call replayed from a CUDA graph with its operands read from HBM (bench/sweep.py).

    python -m bench.row_terms_sweep [--preset gpt-large-40b] [--rows 16] [--output DIR]

Three cases, as a decode step of FP8 weight-only linears meets them between two FP8 rows kernels:
  norm   the residual add of a linear's output (its split-K partial sums, weight scale and bias), then the
         LayerNorm and the next linear's two FP8 terms (before qkv and fc; K = n_embd)
  gelu   fc's output (its partial sums, scale and bias), GELU and mlp proj's terms (K = d_ff)
  plain  the attention output's terms (K = n_embd)
Each case as one compiled function (the compiler makes the terms: fp8.split_rows), and as a compiled function
that stops before the terms, then the kernel (the engine's path); and the kernel alone at num_warps 4-32, each
checked against the compiled terms before it is timed. Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from gptserve.engine import fp8_matmul
from gptserve.engine import row_terms as rt
from gptserve.engine.config import PRESETS

from . import header
from .sweep import relative_error, streamed_us, write_report

WARPS = (4, 8, 16, 32)


def linear_output(partials, weight_scale, bias):
    """A weight-only FP8 linear's output from its kernel's partial sums, as fp8.TorchFp8Linear makes it."""
    return (partials.sum(0) * weight_scale + bias).to(torch.bfloat16)


def before_norm(partials, weight_scale, bias, residual, norm_w, norm_b):
    return residual + linear_output(partials, weight_scale, bias)


def before_gelu(partials, weight_scale, bias):
    return F.gelu(linear_output(partials, weight_scale, bias), approximate="tanh")


def compiled_terms(before, norm: bool):
    """The case as one function: the compiler makes the terms."""
    def whole(*args):
        x = before(*args) if before else args[0]
        if norm:
            x = F.layer_norm(x, x.shape[-1:], args[4], args[5], 1e-5)
        return rt.split_rows(x)
    return torch.compile(whole, dynamic=False, fullgraph=True)


def kernel_terms(before, norm: bool, num_warps: int | None = None):
    """The case as the engine runs it: the compiled part before the terms, then the kernel."""
    compiled = torch.compile(before, dynamic=False, fullgraph=True) if before else None

    def run(*args):
        x = compiled(*args) if compiled else args[0]
        return rt.launch(x, *((args[4], args[5], 1e-5) if norm else (None, None, 0.0)), num_warps=num_warps)
    return run


def cases(preset: str, rows: int):
    """(name, args, the function before the terms or None, whether a LayerNorm comes before the terms)."""
    cfg = PRESETS[preset]
    d, f = cfg.n_embd, cfg.d_ff
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    split = fp8_matmul.plan(d, f, torch.cuda.get_device_properties(0).multi_processor_count)[4]  # mlp proj's
    norm_args = (randn(split, rows, d), randn(d, scale=1e-2), randn(d, dtype=torch.bfloat16),
                 randn(rows, d, dtype=torch.bfloat16), randn(d, dtype=torch.bfloat16).add(1),
                 randn(d, dtype=torch.bfloat16))
    gelu_args = (randn(1, rows, f), randn(f, scale=1e-2), randn(f, dtype=torch.bfloat16))
    return [("norm", norm_args, before_norm, True), ("gelu", gelu_args, before_gelu, False),
            ("plain", (randn(rows, d, dtype=torch.bfloat16),), None, False)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-large-40b", choices=sorted(PRESETS))
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    report = {**header(), "preset": args.preset, "rows": args.rows, "results": []}
    for name, case, before, norm in cases(args.preset, args.rows):
        streamed = tuple(range(len(case)))
        compiled = compiled_terms(before, norm)
        want = rt.join_rows(*compiled(*case))
        row = {"case": name, "k": case[0].shape[-1], "compiled_us": streamed_us(lambda c: compiled(*c), case, streamed)}
        engine = kernel_terms(before, norm)
        row["kernel_error"] = relative_error(rt.join_rows(*engine(*case)), want)
        if row["kernel_error"] >= 1e-2:
            raise SystemExit(f"{name}: the kernel's terms are wrong, relative error {row['kernel_error']:.1e}")
        row["engine_us"] = streamed_us(lambda c: engine(*c), case, streamed)
        x = (torch.compile(before, dynamic=False) if before else (lambda *a: a[0]))(*case)
        norm_args = (case[4], case[5], 1e-5) if norm else (None, None, 0.0)
        row["kernel_alone_us"] = {w: streamed_us(lambda c: rt.launch(c[0], *norm_args, num_warps=w), (x,), (0,))
                                  for w in WARPS}
        report["results"].append(row)
        print(f"{name:5s} K {row['k']:5d}: compiled {row['compiled_us']:6.1f} us, compiled add + kernel "
              f"{row['engine_us']:6.1f} (error {row['kernel_error']:.1e}); kernel alone by num_warps "
              + ", ".join(f"{w}: {us:.1f}" for w, us in row["kernel_alone_us"].items()), flush=True)
    write_report(report, args.output, f"row-terms-sweep-{args.preset}")


if __name__ == "__main__":
    main()
