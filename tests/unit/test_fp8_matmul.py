"""The FP8 rows kernel (fp8_matmul) and its two-term rows (fp8.split_rows): the two terms keep more of each row
than bf16 rounding does, the plan covers the matrix in whole blocks, and the kernel (run by Triton's CPU
interpreter where triton is installed; CI has none) equals the two terms' product with the FP8 weights, also where
N and K end inside a block and K's last slice runs past K."""
import pytest
import torch

from gptserve.engine import fp8_matmul, int8
from gptserve.engine.fp8 import FP8_MAX, quantize_rows, split_rows
from gptserve.engine.fp8_matmul import join_terms
from tests.unit.triton_interpreter import needs_triton, run_interpreted


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("magnitude", [1e-6, 1.0, 1e4])
def test_split_rows_keeps_more_than_bf16_rounding(dtype, magnitude):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(33, 4096, generator=gen) * magnitude).to(dtype)
    x[3] = 0  # an all-zero row: the scale at its floor, both terms zero
    x[5, 7] = -3 * x[5].abs().max()  # an outlier sets its row's scale
    x[6] = torch.linspace(-1, 1, 4096) * magnitude  # every rounding error hi can leave, up to the largest (16 units)
    hi, lo, scale = split_rows(x)
    assert hi.dtype == lo.dtype == torch.float8_e4m3fn and scale.shape == (33,)
    assert not lo.float().isnan().any() and lo.float().abs().max() <= FP8_MAX / 1.75  # within 256 of lo's units
    want = x.double()
    error = (join_terms(hi, lo, scale).double() - want).norm() / want.norm()
    bf16_rounding = (want.bfloat16().double() - want).norm() / want.norm() if dtype == torch.float32 else 2.0 ** -9
    assert error < bf16_rounding, (error, bf16_rounding)
    assert not join_terms(hi, lo, scale)[3].any()


def test_plan_covers_the_matrix_in_whole_blocks():
    for n, k in [(3840, 1280), (1280, 5120), (24576, 8192), (8192, 32768), (192, 64)]:
        block_n, block_k, warps, stages, split = fp8_matmul.plan(n, k, 132)
        assert block_n == 64 and block_k & (block_k - 1) == 0 and 32 <= block_k <= 256 and warps == 4
        k_per_split = -(-k // block_k // split) * block_k
        assert k_per_split * split >= k > k_per_split * (split - 1)  # every slice reads some of K
    assert fp8_matmul.plan(8192, 8192, 132)[4] == 2  # 128 column blocks: two slices fill 132 SMs


def test_plan_takes_three_stages_where_they_make_one_wave():
    """The 40B's qkv (384 programs) fits 132 SMs at three programs an SM, not at two; its fc (512) fits neither;
    attn proj (256: two slices of 128 blocks) fits two already; gpt2-large's matrices all fit two."""
    stages = {name: fp8_matmul.plan(n, k, 132)[3] for name, n, k in [
        ("qkv", 24576, 8192), ("fc", 32768, 8192), ("attn_proj", 8192, 8192), ("mlp_proj", 8192, 32768)]}
    assert stages == {"qkv": fp8_matmul.ONE_WAVE_STAGES, "fc": 4, "attn_proj": 4, "mlp_proj": 4}
    assert {fp8_matmul.plan(n, k, 132)[3] for n, k in [(3840, 1280), (5120, 1280), (1280, 5120), (1280, 1280)]} == {4}


def check_kernel(rows: str, weights: str = "fp8"):
    """The kernel's partial sums against the two terms' product in float64 (run_interpreted calls this); with
    int8 weights and terms, the sums in int32 (exact)."""
    rows = int(rows)
    gen = torch.Generator().manual_seed(rows)
    quantize, split = (int8.quantize_rows, int8.split_rows) if weights == "int8" else (quantize_rows, split_rows)
    # N past a 64-row block; K 320 in blocks of 64 over 3 slices of 128: the last slice runs past K
    for n, k, config in [(200, 320, (64, 64, 4, 1, 3)), (128, 256, (64, 128, 4, 2, 1))]:
        w, _ = quantize(torch.randn(n, k, generator=gen))
        x = torch.randn(rows, k, generator=gen).bfloat16()
        hi, lo, scale = split(x)
        partial = fp8_matmul.launch(hi, lo, scale, w, config)
        assert partial.shape == (config[4], rows, n)
        got, want = partial.double().sum(0), fp8_matmul.reference(hi, lo, scale, w).double()
        assert ((got - want).norm() / want.norm()).item() < 1e-5, (n, k)
        exact = x.double() @ w.double().t()
        assert ((got - exact).norm() / exact.norm()).item() < 2.0 ** -9, (n, k)


@needs_triton
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("weights", ["fp8", "int8"])
def test_kernel_equals_the_two_terms_product(rows, weights):
    run_interpreted("tests.unit.test_fp8_matmul", "check_kernel", rows, weights)


def test_reference_is_the_joined_rows_product():
    """The op's CPU path (one slice) is the two terms' rows times the weights, for FP8 and int8 terms."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 64, generator=gen), torch.randn(24, 64, generator=gen)
    for quantize, split in ((quantize_rows, split_rows), (int8.quantize_rows, int8.split_rows)):
        wq, _ = quantize(w)
        got = fp8_matmul.fp8_rows_matmul(*split(x), wq)
        want = x @ wq.float().t()
        assert got.shape == (1, 3, 24) and ((got[0] - want).norm() / want.norm()).item() < 2.0 ** -9
