"""FP8 row quantisation (gptserve.engine.fp8.quantize_rows), which runs on a CPU too: the same bytes as the plain
formula with its clamp, for every input dtype and magnitude, all-zero rows included; and its compiled form
(quantize_activations) against it."""
import pytest
import torch

from gptserve.engine.fp8 import FP8, FP8_MAX, quantize_activations, quantize_rows


def clamped(x: torch.Tensor):
    """The plain formula: |x|'s row maximum, then x / scale clamped to FP8's range."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-6, 1.0, 1e4])
def test_quantize_rows_gives_the_bytes_of_the_clamped_formula(dtype, magnitude):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(65, 999, generator=gen) * magnitude).to(dtype)
    x[3] = 0  # an all-zero row: the scale's floor
    x[5, 7] = -x[5].abs().max()  # a row whose maximum is negative
    (q, scale), (want_q, want_scale) = quantize_rows(x), clamped(x)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)
    assert not q.float().isnan().any() and q.float().abs().max() <= FP8_MAX


def check_compiled_quantisation(device: str, shapes=((64, 999), (17, 1280))):
    """quantize_activations (compiled once for every shape) against quantize_rows eager: the same scales, and FP8
    values at most one FP8 step apart (a compiled division may round differently: seen on the H200, not on a CPU)
    in under 1% of the elements. tests/gpu calls this with device cuda and the 40B's shapes."""
    for shape in shapes:
        x = torch.randn(shape, device=device).bfloat16() * 3
        x[3] = 0
        (q, scale), (want_q, want_scale) = quantize_activations(x), quantize_rows(x)
        torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)
        got, want = q.float(), want_q.float()
        step = want.abs() / 8 + 2.0 ** -9  # e4m3: 3 mantissa bits; the smallest subnormal step
        assert ((got - want).abs() <= step).all(), shape
        assert (got != want).float().mean().item() < 0.01, shape


def test_compiled_quantisation_matches_eager():
    check_compiled_quantisation("cpu")
