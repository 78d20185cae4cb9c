"""Where an FP8 (or int8) prefill's linear time goes, part by part, against bf16 cuBLAS.

One preset's four block matrices at prefill's row count (16 prompts of 1024 tokens: 16,384 rows).

    python -m bench.prefill_linear_sweep [--preset gpt-large-40b] [--rows 16384] [--output DIR]

Per matrix: cuBLAS's bf16 linear with its bias; the FP8 linear as the engine runs it for prefill
(TorchFp8Linear); the row-wise activation quantisation alone, eager (quantize_rows), compiled for any shape
(quantize_activations, what the engine runs) and compiled for this shape alone; _scaled_mm alone, with and
without the bias inside and fast accumulation. int8 weight-only's the same way: the linear as the engine runs it
(Int8WeightOnlyLinear: the rows quantised, then int8_matmul's kernel), that kernel alone, and what it replaced
(torch._int_mm, then the scales and the bias in torch). Each quantised result carries its error against the bf16
linear's (without the bias where it has none). Needs a CUDA GPU of compute capability >= 8.9 (int8: 9.0).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptserve.engine import int8, int8_matmul
from gptserve.engine.fp8 import TorchFp8Linear, quantize_activations, quantize_rows

from . import header
from .rows_linear_sweep import layers
from .sweep import relative_error, write_report


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-large-40b")
    p.add_argument("--rows", type=int, default=16 * 1024)
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    from triton.testing import do_bench

    torch.manual_seed(0)
    quantize_static = torch.compile(quantize_rows, dynamic=False)  # one graph per shape: the bound for one kernel
    report = {**header(), "preset": args.preset, "rows": args.rows, "results": []}
    for name, (n, k, *_rest) in layers(args.preset).items():
        if name == "lm_head":  # prefill reads the last position's logits only
            continue
        linear = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        fp8 = TorchFp8Linear(linear)
        x = torch.randn(args.rows, k, device="cuda", dtype=torch.bfloat16)
        xq, x_scale = quantize_rows(x)  # the operands of _scaled_mm alone, and eager's bytes
        w_t, w_scale, bias = fp8.weight_fp8.t(), fp8.weight_scale, fp8.bias

        def scaled_mm(with_bias: bool, fast: bool):
            return torch._scaled_mm(xq, w_t, scale_a=x_scale, scale_b=w_scale, bias=bias if with_bias else None,
                                    out_dtype=torch.bfloat16, use_fast_accum=fast)

        int8_linear = int8.Int8WeightOnlyLinear(linear)
        x8, x8_scale = int8.quantize_rows(x)
        int8_args = (x8, x8_scale.view(-1), *int8_linear.quantized_weight(), int8_linear.bias, n, torch.bfloat16)
        biased, bare = F.linear(x, linear.weight, linear.bias), F.linear(x, linear.weight)
        candidates = {  # label: (call, the bf16 result an FP8 one is compared with)
            "bf16_linear": (lambda: F.linear(x, linear.weight, linear.bias), None),
            "fp8_linear": (lambda: fp8(x), biased),
            "quantize_eager": (lambda: quantize_rows(x), None),
            "quantize_compiled": (lambda: quantize_activations(x), None),
            "quantize_compiled_static": (lambda: quantize_static(x), None),
            "scaled_mm": (lambda: scaled_mm(False, False), bare),
            "scaled_mm_fast": (lambda: scaled_mm(False, True), bare),
            "scaled_mm_bias": (lambda: scaled_mm(True, False), biased),
            "scaled_mm_bias_fast": (lambda: scaled_mm(True, True), biased),
            "int8_linear": (lambda: int8_linear(x), biased),
            "int8_matmul_kernel": (lambda: int8_matmul.launch(*int8_args), biased),
            "int_mm_then_scales": (lambda: int8_matmul.reference(*int8_args), biased),
        }
        row = {"layer": name, "n": n, "k": k, "tflop": 2 * args.rows * n * k / 1e12, "us": {}, "error": {}}
        for label, (fn, want) in candidates.items():
            try:
                out = fn()
                row["us"][label] = do_bench(fn, warmup=50, rep=200) * 1e3
            except Exception as exc:  # e.g. a bias _scaled_mm does not take with these scales
                row["us"][label] = f"{type(exc).__name__}: {str(exc)[:160]}"
                continue
            if want is not None:
                row["error"][label] = relative_error(out, want)
        q_comp, s_comp = quantize_activations(x)
        row["compiled_quantize_equal"] = bool(torch.equal(xq.view(torch.uint8), q_comp.view(torch.uint8))
                                              and torch.equal(x_scale, s_comp))
        report["results"].append(row)
        us = row["us"]
        print(f"{name:10s} [{args.rows} x {k}] x [{k} x {n}]: "
              + ", ".join(f"{label} {v:.0f} us" if isinstance(v, float) else f"{label} {v}"
                          for label, v in us.items())
              + f"; errors {', '.join(f'{label} {e:.4f}' for label, e in row['error'].items())}; "
              f"compiled quantisation equal: {row['compiled_quantize_equal']}", flush=True)
    write_report(report, args.output, f"prefill-linear-sweep-{args.preset}")


if __name__ == "__main__":
    main()
