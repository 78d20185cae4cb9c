"""int8 weight-only linear layers (fp8_mode=int8-weight-only): the bytes of FP8 weight-only at a third of its
rounding error.

A weight matrix quantised per output row to int8 keeps 0.91% of it as error where e4m3 keeps 2.65% (a Gaussian
matrix of the 40B's width, docs/benchmarks.md): e4m3 has three mantissa bits, int8 seven on the row's scale.
Decode reads the same bytes either way, through the same kernels:
  - one row: the fused linear (rows_linear.py) widens the int8 tiles in registers, as it does FP8 ones;
  - 2-16 rows: the two-term rows kernel (fp8_matmul.py) takes the rows as two int8 terms, x ~= (hi + lo / 254) *
    scale (about 15 bits of the row's largest element), into int8 MMAs that sum in int32 exactly;
  - more rows (prefill): the rows quantised to int8 once (one compiled kernel), then int8_matmul.py's GEMM over
    int8 MMAs with both scales and the bias in its epilogue, as FP8 prefill quantises before _scaled_mm.
A CPU runs the same arithmetic in torch, eagerly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .fp8 import quantize_linear, row_scales, run_compiled
from .fp8_matmul import INT8_LO_RATIO, MAX_ROWS, fp8_rows_matmul
from .int8_matmul import finish, int8_matmul

INT8_MAX = 127
ALIGN = 16  # the kernels' tensor-memory tiles want 16-byte rows; torch._int_mm (a CPU's path) N and K in 8s


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (int8 [M, K], fp32 scale [M, 1]) with x ~= q * scale, |q| <= 127."""
    scale = row_scales(x, INT8_MAX)
    return (x.float() / scale).round().to(torch.int8), scale


def split_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (hi, lo: int8 [M, K], scale: fp32 [M]) with x ~= (hi + lo / INT8_LO_RATIO) * scale: hi is x
    quantised per row, lo its rounding error (at most half a unit) in units INT8_LO_RATIO times finer."""
    hi, scale = quantize_rows(x)
    lo = ((x.float() / scale - hi.float()) * INT8_LO_RATIO).round().to(torch.int8)
    return hi, lo, scale.view(-1)


class Int8WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W in int8 (a scale per output row); output in x's dtype."""

    weight_only = True

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        assert self.in_features % ALIGN == 0, f"int8 weights need K in multiples of {ALIGN}, not {self.in_features}"
        q, scale, bias = quantize_linear(linear, quantize_rows)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)  # [1, N_padded]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 [N_padded, K], fp32 scale [N_padded]): what the fused linear reads."""
        return self.weight_int8, self.weight_scale.view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, K]
        args = (rows, self.weight_int8, self.weight_scale, self.bias, self.out_features)
        y = few_rows_product(*args) if rows.shape[0] <= MAX_ROWS else many_rows_product(*args)
        return y.view(*shape[:-1], self.out_features)


def few_rows_product(rows, weight, weight_scale, bias, out_features: int) -> torch.Tensor:
    """rows [M <= 16, K] @ (weight * scale)^T + bias -> [M, out_features] in rows' dtype: two int8 terms."""
    y = fp8_rows_matmul(*split_rows(rows), weight).sum(0) * weight_scale  # [M, N] fp32
    return finish(y, bias, out_features, rows.dtype)


def many_rows_product(rows, weight, weight_scale, bias, out_features: int) -> torch.Tensor:
    """The same for more rows: the rows quantised once (one compiled kernel on a GPU), then int8 MMAs summing in
    int32 (exact) with the scales and the bias in the GEMM's epilogue."""
    xq, x_scale = run_compiled(quantize_rows, rows) if rows.is_cuda else quantize_rows(rows)  # [M, K], [M, 1]
    return int8_matmul(xq, x_scale.view(-1), weight, weight_scale.view(-1), bias, out_features, rows.dtype)
