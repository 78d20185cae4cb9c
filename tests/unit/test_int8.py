"""int8 weight-only linears (gptserve.engine.int8) on the CPU, which runs the kernels' arithmetic in torch: the
rows' two int8 terms keep more than bf16 rounding, the weights' rounding error is a third of FP8's, the layer
follows the float linear at decode and prefill row counts, and an engine with it generates. Prefill's GEMM
kernel (int8_matmul) equals its torch arithmetic under Triton's interpreter."""
import pytest
import torch
import torch.nn as nn

from gptserve.engine import GREEDY, Engine, fp8, int8, int8_matmul
from gptserve.engine.fp8_matmul import join_terms
from gptserve.settings import ServingConfig
from tests.unit.triton_interpreter import needs_triton, run_interpreted


@pytest.mark.parametrize("magnitude", [1e-6, 1.0, 1e4])
def test_split_rows_keeps_more_than_bf16_rounding(magnitude):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(33, 4096, generator=gen) * magnitude
    x[3] = 0  # an all-zero row: both terms zero
    x[5, 7] = -3 * x[5].abs().max()  # an outlier sets its row's scale
    x[6] = torch.linspace(-1, 1, 4096) * magnitude  # every rounding error hi can leave
    hi, lo, scale = int8.split_rows(x)
    assert hi.dtype == lo.dtype == torch.int8 and scale.shape == (33,)
    assert hi.abs().max() <= 127 and lo.abs().max() <= 127
    joined = join_terms(hi, lo, scale).double()
    want = x.double()
    bf16_rounding = (want.bfloat16().double() - want).norm() / want.norm()
    assert (joined - want).norm() / want.norm() < bf16_rounding / 10
    assert not joined[3].any()


def test_weights_round_to_a_third_of_fp8s_error():
    w = torch.randn(1024, 8192, generator=torch.Generator().manual_seed(0))

    def error(q, scale):
        return ((q.float() * scale - w).norm() / w.norm()).item()

    assert error(*int8.quantize_rows(w)) < 0.4 * error(*fp8.quantize_rows(w))  # 0.91% against 2.65%


@pytest.mark.parametrize("rows", [1, 5, 16, 40])  # one row, the rows kernel's 2-16, prefill's int8_matmul
def test_layer_follows_the_float_linear(rows):
    torch.manual_seed(rows)
    linear = nn.Linear(256, 200)  # 200 outputs: padded to 208
    layer = int8.Int8WeightOnlyLinear(linear)
    assert layer.weight_int8.shape == (208, 256) and layer.quantized_weight()[1].shape == (208,)
    x = torch.randn(2, rows, 256)
    with torch.no_grad():
        got, want = layer(x), linear(x)
    assert got.shape == want.shape == (2, rows, 200)
    assert ((got - want).norm() / want.norm()).item() < 0.02


def test_layer_refuses_a_width_its_kernels_cannot_tile():
    with pytest.raises(AssertionError, match="multiples of 16"):
        int8.Int8WeightOnlyLinear(nn.Linear(200, 64))


@pytest.mark.parametrize("decode_linears", ["torch", "one_row"])
def test_engine_with_int8_weights_generates(decode_linears):
    settings = ServingConfig(preset="tiny", fp8_mode="int8-weight-only", decode_linears=decode_linears)
    engine = Engine(settings, device="cpu")
    assert engine.resolved.fp8_mode == "int8-weight-only"
    assert any(isinstance(m, int8.Int8WeightOnlyLinear) for m in engine.model.modules())
    prompts = [tuple(range(1, 40)), tuple(range(5, 25))]  # 39-token prefill: int8_matmul
    tokens = engine.generate(prompts, [GREEDY] * 2, 8).tokens
    assert [len(t) for t in tokens] == [8, 8]
    assert engine.probe_max_abs_diff() < 0.05  # against the fp32 reference on the same weights


def check_prefill_kernel(rows: str):
    """int8_matmul's kernel against its torch arithmetic (run_interpreted calls this): exact int32 sums, so only
    the epilogue's rounding to bf16 may differ."""
    gen = torch.Generator().manual_seed(int(rows))
    layer = int8.Int8WeightOnlyLinear(nn.Linear(96, 200).to(torch.bfloat16))  # N padded to 208: masked columns
    xq, x_scale = int8.quantize_rows(torch.randn(int(rows), 96, generator=gen))
    wq, w_scale = layer.quantized_weight()
    small = (16, 32, 32, 2, 4, 2)  # several row, column and K blocks, and a last group of fewer row blocks
    for bias in (layer.bias, None):
        args = (xq, x_scale.view(-1), wq, w_scale, bias, 200, torch.bfloat16)
        got = int8_matmul.launch(*args, config=small)
        torch.testing.assert_close(got.float(), int8_matmul.reference(*args).float(), atol=0, rtol=8e-3)


@needs_triton
@pytest.mark.parametrize("rows", [1, 37, 80])
def test_prefill_kernel_equals_its_torch_arithmetic(rows):
    run_interpreted("tests.unit.test_int8", "check_prefill_kernel", rows)
