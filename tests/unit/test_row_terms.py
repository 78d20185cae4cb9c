"""The row-terms kernel (row_terms.py): each row's two FP8 terms, optionally of its LayerNorm, one program a row.

Triton's CPU interpreter rounds casts its own way (it truncates, and its round-to-nearest can carry into the wrong
exponent), so the kernel is checked there on rows whose LayerNorm and terms are exact: the kernel must find each
row's mean and spread over K (not the padded block), the scale, the terms and the strides as torch does. The GPU
tests compare it with torch on random rows (tests/gpu)."""
import pytest
import torch
import torch.nn.functional as F

from gptserve.engine import row_terms as rt
from tests.unit.triton_interpreter import needs_triton, run_interpreted


def exact_rows(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """[m, k] bf16 rows c + s * (+-1, half each): mean c and standard deviation s, exact in fp32 (s a power of 2),
    so with eps 0 their LayerNorm is exactly +-1 before its weight and bias."""
    signs = torch.tensor([1.0, -1.0]).repeat(k // 2)[torch.randperm(k, generator=gen)]
    centre = torch.randint(-8, 8, (m, 1), generator=gen).float()
    spread = 2.0 ** torch.randint(-3, 4, (m, 1), generator=gen).float()
    return (centre + spread * signs).bfloat16()


def check_exact(k: str):
    """Kernel against torch on rows whose every step is exact (run_interpreted calls this)."""
    k = int(k)
    gen = torch.Generator().manual_seed(k)
    x = exact_rows(5, k, gen)
    padded = torch.zeros(5, k + 64, dtype=torch.bfloat16)
    padded[:, :k] = x  # a row stride past K
    # LayerNorm outputs +-w + b within 7: 64 times that is exact in FP8 when the row's maximum is 7
    weight = torch.randint(1, 4, (k,), generator=gen).bfloat16()
    bias = torch.randint(-3, 4, (k,), generator=gen).bfloat16()
    # without the LayerNorm: integers within 7, each row's maximum 7, scaled by powers of 2 far from 1
    plain = torch.randint(-7, 8, (5, k), generator=gen).float()
    plain[:, 3] = 7
    plain = (plain * 2.0 ** torch.tensor([[-20], [-3], [0], [5], [30]])).bfloat16()
    for norm, rows in [((weight, bias), padded[:, :k]), ((None, None), plain)]:
        got, want = rt.launch(rows, *norm, 0.0), rt.reference(rows, *norm, 0.0)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
            assert torch.equal(g.float(), w.float()), (k, norm[0] is not None, (g.float() - w.float()).abs().max())


@needs_triton
@pytest.mark.parametrize("k", [320, 2048])
def test_kernel_equals_torch_on_exact_rows(k):
    run_interpreted("tests.unit.test_row_terms", "check_exact", k)


def check_rounding(k: str):
    """hi and the scale against torch's on random rows spanning nine decades, FP8's subnormals among them: the
    kernel rounds hi in fp32 itself (its casts of exact FP8 values are exact in the interpreter too)."""
    k = int(k)
    gen = torch.Generator().manual_seed(k)
    x = (torch.randn(5, k, generator=gen) * torch.logspace(-7, 2, k)).bfloat16()
    (hi, _, scale), (want_hi, _, want_scale) = rt.launch(x, None, None, 0.0), rt.split_rows(x)
    assert torch.equal(scale, want_scale)
    assert torch.equal(hi.float(), want_hi.float()), (hi.float() != want_hi.float()).sum()
    assert (want_hi.float().abs() < 2 ** -6).sum() > 50  # subnormal FP8 values were rounded


@needs_triton
def test_kernel_rounds_hi_as_torch_casts_to_fp8():
    run_interpreted("tests.unit.test_row_terms", "check_rounding", 1280)


def test_exact_rows_are_exact():
    """What check_exact relies on: the LayerNorm of exact_rows is +-1 in bf16 (within fp32 rounding before it),
    and the terms split it exactly."""
    gen = torch.Generator().manual_seed(0)
    x = exact_rows(5, 320, gen)
    normed = F.layer_norm(x.float(), (320,), eps=0.0)
    assert torch.equal(normed.bfloat16().abs().float(), torch.ones_like(normed))
    hi, lo, scale = rt.reference(x, torch.full((320,), 3.0).bfloat16(), torch.full((320,), 4.0).bfloat16(), 0.0)
    assert torch.equal(rt.join_rows(hi, lo, scale), normed.bfloat16().float() * 3 + 4)
    assert not lo.float().any()


def test_custom_op_on_cpu_is_split_rows_of_the_layer_norm():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 96, generator=gen).bfloat16()
    w, b = torch.randn(96, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    ln = F.layer_norm(x.float(), (96,), w.float(), b.float(), 1e-5).bfloat16()
    for got, want in zip(rt.row_terms(x, w, b, 1e-5), rt.split_rows(ln)):
        assert torch.equal(got.float(), want.float())
    for got, want in zip(rt.row_terms(x, None, None, 0.0), rt.split_rows(x)):
        assert torch.equal(got.float(), want.float())


def test_warps_hold_a_row_in_registers():
    assert [rt.warps(k) for k in (64, 1280, 5120, 8192, 32768)] == [4, 4, 16, 16, 32]
    assert rt.block(320) == 512 and rt.block(8192) == 8192 and rt.block(32768) == rt.MAX_K
