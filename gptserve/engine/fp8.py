"""FP8 linear layers, three ways (fp8_mode), and int8 weight-only (int8.py):

  weight-only         FP8 weights; a decode step's few rows meet them in FP8 MMAs as two FP8 terms that together
                      keep bf16's precision (split_rows; fp8_matmul.py, split-K): half the bytes of bf16 where
                      bytes are the cost. Prefill (many rows) quantises its activations (one compiled kernel) and
                      runs FP8 tensor-core GEMMs with the bias inside.
                      With decode_linears fused or one_row, one-row steps go through rows_linear.py instead
                      (bf16 rows, FP8 weights widened in registers: at one row that reads them at 3.3-3.9 TB/s,
                      run 26 in docs/benchmarks.md, with no quantisation kernels before it).
  torch               FP8 weights and activations everywhere (dynamic row-wise activation scales, _scaled_mm).
  transformer-engine  te.Linear under FP8 autocast (optional package).

  int8-weight-only    int8 weights (int8.py): FP8 weight-only's bytes and kernels at a third of its rounding error.

Weights are quantised once, per output row. FP8 needs a CUDA GPU of compute capability >= 8.9; int8 a Hopper GPU
(the rows kernel's tensor-memory loads) or a CPU.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp8_matmul import LO_RATIO, MAX_ROWS, fp8_rows_matmul

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
ALIGN = 16  # _scaled_mm needs both matrix dimensions to be multiples of 16

log = logging.getLogger("gptserve")


def transformer_engine_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def require_transformer_engine():
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:
        raise ValueError(
            f"fp8_mode=transformer-engine but transformer_engine.pytorch does not import ({exc}); "
            "install transformer-engine[pytorch] or use fp8_mode=torch"
        ) from exc


def row_scales(x: torch.Tensor, largest: float) -> torch.Tensor:
    """x [M, K] -> fp32 [M, 1]: each row's largest |x| over `largest`, the format's largest value (one reduction,
    no |x| copy; an all-zero row gets a tiny scale, not zero)."""
    return torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True).float().clamp(min=1e-12) / largest


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scale [M, 1]) with x ~= q * scale.

    No clamp, since |x| / scale is at most FP8_MAX within fp32 rounding, which the cast rounds to FP8_MAX
    (tests/unit/test_fp8.py: the same bytes as with the clamp). Eager, that is still three passes over x;
    quantize_activations runs it as one compiled kernel."""
    scale = row_scales(x, FP8_MAX)
    return (x / scale).to(FP8), scale


def split_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (hi, lo: fp8 [M, K], scale: fp32 [M]) with x ~= (hi + lo / LO_RATIO) * scale.

    hi is x quantised per row (4 significant bits); lo is hi's rounding error in units LO_RATIO times finer, so the
    sum keeps about 8 significant bits of each element, as bf16 does (fp8_matmul.py multiplies both by FP8
    weights). One row maximum, no clamp (as quantize_rows)."""
    hi, scale = quantize_rows(x)
    lo = ((x.float() - hi.float() * scale) * (LO_RATIO / scale)).to(FP8)
    return hi, lo, scale.view(-1)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=True, fullgraph=True)


def run_compiled(fn, *args):
    """fn(*args) compiled once for every shape where it would run eager (prefill); traced with the rest where a
    compiled region calls it."""
    if torch.compiler.is_compiling():
        return fn(*args)
    return _compiled(fn)(*args)


def quantize_linear(linear: nn.Linear, quantize) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """linear's weight padded to whole ALIGN rows (e.g. a 50257-token LM head -> 50272) and quantised per row by
    `quantize` (this module's quantize_rows or int8's), its bias padded alike: (q [N_padded, K], fp32 scale
    [1, N_padded], bias [N_padded] or None)."""
    pad = -linear.out_features % ALIGN
    q, scale = quantize(F.pad(linear.weight.detach().float(), (0, 0, 0, pad)))  # [N_padded, K], [N_padded, 1]
    bias = None if linear.bias is None else F.pad(linear.bias.detach(), (0, pad))
    return q, scale.t().contiguous(), bias


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows for a linear's input, as one compiled kernel (91 ms of kernels in the 40B's FP8 prefill
    against 332 eager, runs 29-30)."""
    return run_compiled(quantize_rows, x)


class TorchFp8Linear(nn.Module):
    """y = x W^T + b with W in FP8 (row-wise scales) through torch._scaled_mm; output in x's dtype."""

    weight_only = False

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        q, scale, bias = quantize_linear(linear, quantize_rows)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale)  # [1, N_padded]
        # bf16: the bias _scaled_mm adds with row-wise scales
        self.bias = None if bias is None else nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(FP8 [N_padded, K], fp32 scale [N_padded]): what the fused linear reads."""
        return self.weight_fp8, self.weight_scale.view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, K]
        if self.weight_only and rows.shape[0] <= MAX_ROWS:
            y = fp8_rows_matmul(*split_rows(rows), self.weight_fp8).sum(0) * self.weight_scale  # [M, N] fp32
            if self.bias is not None:
                y = y + self.bias
        else:
            xq, x_scale = quantize_activations(rows)  # [M, K], [M, 1]
            # the bias inside and fast accumulation: 1.15-1.31x faster than _scaled_mm and then the bias add, at
            # the same error (bench.prefill_linear_sweep on the 40B's prefill, run 29)
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                 bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=True)
        return y[:, : self.out_features].to(x.dtype).view(*shape[:-1], self.out_features)


class WeightOnlyFp8Linear(TorchFp8Linear):
    """FP8 weights; up to MAX_ROWS rows as two FP8 terms through the FP8 rows kernel, more rows through
    _scaled_mm."""

    weight_only = True


class TEFp8Linear(nn.Module):
    """te.Linear under Transformer Engine's FP8 autocast (delayed scaling)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        import transformer_engine.pytorch as te
        from transformer_engine.common.recipe import DelayedScaling

        out_features, in_features = linear.weight.shape
        self.inner = te.Linear(
            in_features, out_features, bias=linear.bias is not None,
            params_dtype=linear.weight.dtype, device=linear.weight.device,
        )
        with torch.no_grad():
            self.inner.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.inner.bias.copy_(linear.bias)
        self._te, self._recipe = te, DelayedScaling()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        pad = -rows % ALIGN  # TE's FP8 GEMMs want the token count aligned too
        flat = F.pad(x.reshape(rows, -1), (0, 0, 0, pad))
        with self._te.fp8_autocast(enabled=True, fp8_recipe=self._recipe):
            y = self.inner(flat)
        return y[:rows].view(*x.shape[:-1], -1)


WEIGHT_ONLY = ("weight-only", "int8-weight-only")  # modes whose decode rows keep their precision


def linear_class(mode: str) -> type[nn.Module]:
    """The linear layer that fp8_mode `mode` swaps in for nn.Linear."""
    from .int8 import Int8WeightOnlyLinear  # imported here: int8.py builds on this module

    return {"weight-only": WeightOnlyFp8Linear, "torch": TorchFp8Linear, "transformer-engine": TEFp8Linear,
            "int8-weight-only": Int8WeightOnlyLinear}[mode]


class Fp8Converter:
    """linear(layer): the FP8 version of one nn.Linear; block(module): swap every nn.Linear inside, in place."""

    def __init__(self, mode: str):
        self.linear = linear_class(mode)

    def block(self, block: nn.Module):
        for child in list(block.modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, nn.Linear):
                    setattr(child, attr, self.linear(sub))


def resolve_mode(mode: str, dev: torch.device) -> str:
    """The FP8 implementation to use for setting fp8_mode on `dev`."""
    if mode == "none":
        return "none"
    if mode == "int8-weight-only":
        if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (9, 0):
            raise ValueError("fp8_mode=int8-weight-only needs compute capability >= 9.0 (Hopper) or a CPU")
        return mode
    if dev.type != "cuda":
        log.info("fp8_mode=%s needs a CUDA GPU; using fp8_mode=none on %s", mode, dev)
        return "none"
    if mode == "transformer-engine":
        require_transformer_engine()
        return mode
    if mode == "auto":
        return "weight-only" if torch.cuda.get_device_capability(dev) >= (8, 9) else "none"
    if torch.cuda.get_device_capability(dev) < (8, 9):
        raise ValueError(f"fp8_mode={mode} needs compute capability >= 8.9 (Ada or Hopper)")
    return mode
