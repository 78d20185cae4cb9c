"""FP8 row quantisation (gptserve.engine.fp8.quantize_rows), which runs on a CPU too: the same bytes as the plain
formula with its clamp, for every input dtype and magnitude, all-zero rows included."""
import pytest
import torch

from gptserve.engine.fp8 import FP8, FP8_MAX, quantize_rows


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
