"""The fused decode linear (rows_linear): its torch arithmetic equals the layers it replaces, its plan covers the
matrix, and the Triton kernel (run by Triton's CPU interpreter where triton is installed; CI has none) equals
the torch arithmetic for one row and for the 16-row tile, bf16 and FP8 weights, with and without every part."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptserve.engine import int8
from gptserve.engine import rows_linear as rl
from gptserve.engine.kv_cache import write_cache
from tests.unit.triton_interpreter import needs_triton, run_interpreted


def layers(k=96, n=40, seed=0):
    torch.manual_seed(seed)
    norm, linear = nn.LayerNorm(k), nn.Linear(k, n)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm, linear


@pytest.mark.parametrize("rows", [1, 5])
def test_fused_linear_equals_the_layers_it_replaces(rows):
    norm, linear = layers()
    x = torch.randn(rows, 96) * 3 + 1  # an offset mean: the normalisation matters
    residual = torch.randn(rows, 40)
    with torch.no_grad():
        want = residual + F.gelu(linear(norm(x)), approximate="tanh")
        got = rl.fused_linear(x, linear, norm=norm, residual=residual, gelu=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rl.fused_linear(x, linear), linear(x), atol=1e-5, rtol=1e-5)


def test_a_wide_row_is_normalised_before_the_kernel(monkeypatch):
    """Rows wider than NORM_MAX_K reach the kernel normalised, with no LayerNorm of their own; the result is the
    same either way."""
    k = rl.NORM_MAX_K + 128
    norm, linear = layers(k=k)
    x = torch.randn(2, k) * 3 + 1
    launched = []
    rows_linear = rl.rows_linear
    monkeypatch.setattr(rl, "rows_linear", lambda *a: (launched.append(a[4] is None), rows_linear(*a))[1])
    with torch.no_grad():
        torch.testing.assert_close(rl.fused_linear(x, linear, norm=norm), linear(norm(x)), atol=1e-4, rtol=1e-4)
        rl.fused_linear(x[:, :96], layers()[1], norm=layers()[0])
    assert launched == [True, False]  # the wide row's LayerNorm ran before; the narrow one's inside


@pytest.mark.parametrize("fp8", [False, True])
def test_plan_gives_power_of_two_blocks_and_fills_the_gpu(fp8):
    for rows, n, k in [(1, 1280, 1280), (1, 3840, 1280), (1, 1280, 5120), (1, 50257, 1280), (16, 1280, 5120),
                       (16, 50257, 1280), (1, 24576, 8192), (1, 8192, 32768)]:
        block_n, block_k, warps, stages = rl.plan(rows, n, k, fp8)
        assert block_n & (block_n - 1) == 0 and block_k & (block_k - 1) == 0
        assert block_n >= (4 if rows == 1 else 16)  # tl.dot's 16-column minimum for the tile path
        assert block_k <= rl.next_power_of_2(k) and warps in (4, 8) and stages in (2, 3)
    assert -(-1280 // rl.plan(1, 1280, 1280, fp8)[0]) >= 132  # gpt2-large's narrowest matrix still fills 132 SMs


def test_plan_streams_fp8_tiles_with_fewer_warps_at_one_row():
    # gpt2-large's one-row FP8 plans: four warps for half bf16's bytes a tile (run 66); the 40B's stay as they were
    for n, k in [(3840, 1280), (1280, 1280), (5120, 1280), (1280, 5120)]:
        assert (rl.plan(1, n, k, one_byte=True)[2], rl.plan(1, n, k)[2]) == (4, 8)
    assert rl.plan(1, 50257, 1280, one_byte=True) == (32, 256, 4, 2)
    assert rl.plan(1, 24576, 8192, one_byte=True) == rl.plan(1, 24576, 8192)


def test_fused_linear_refuses_what_it_cannot_fuse():
    norm, linear = layers()
    with pytest.raises(TypeError, match="weight-only \\(FP8 or int8\\) linear"):
        rl.fused_linear(torch.randn(1, 96), nn.Sequential(linear))
    with pytest.raises(ValueError, match="weight and bias"):
        rl.fused_linear(torch.randn(1, 96), linear, norm=nn.LayerNorm(96, bias=False))


def fp8_layer(linear):
    """A weight-only FP8 layer's operands, as gptserve.engine.fp8 keeps them: per-row scales, rows padded to 16."""
    from gptserve.engine.fp8 import WeightOnlyFp8Linear
    return WeightOnlyFp8Linear(linear)


def check_kernel(rows: str, weights: str):
    """The kernel against the torch arithmetic (run_interpreted calls this under Triton's interpreter)."""
    rows = int(rows)
    # the interpreter's tl.dot multiplies bf16 as raw bits: the 16-row tile is checked in fp16 (a GPU runs both)
    dtype = torch.bfloat16 if rows == 1 else torch.float16
    norm, linear = layers(k=200, n=40)  # K not a multiple of BLOCK_K, N not of BLOCK_N: masks exercised
    layer = fp8_layer(linear) if weights == "fp8" else linear.to(dtype)
    norm = norm.to(dtype)
    x = (torch.randn(rows, 200) * 3 + 1).to(dtype)
    residual = torch.randn(rows, 40).to(dtype)
    weight, scale = layer.quantized_weight() if weights == "fp8" else (layer.weight, None)
    if weights == "int8":  # as int8.Int8WeightOnlyLinear keeps them (K of 200 is no multiple of its 16: no layer)
        weight, scale = int8.quantize_rows(linear.weight.detach())
        scale = scale.view(-1)
    short_k = (4 if rows == 1 else 16, 64, 4, 2)  # several K blocks: accumulation and LayerNorm across them
    for n, r, gelu in [(norm, residual, True), (None, None, False)]:
        args = (x, weight, scale, layer.bias.to(dtype), None if n is None else n.weight,
                None if n is None else n.bias, r, 40, gelu, 1e-5)
        for config in (None, short_k):
            torch.testing.assert_close(rl.launch(*args, config=config).float(), rl.reference(*args).float(),
                                       atol=2e-2, rtol=2e-2)


@needs_triton
@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("weights", ["bf16", "fp8", "int8"])
def test_kernel_equals_the_torch_arithmetic(rows, weights):
    run_interpreted("tests.unit.test_rows_linear", "check_kernel", rows, weights)


def check_cache_write(rows: str, cache_dtype: str):
    """The qkv kernel's write of k and v into the caches: the same qkv as the op's torch path (rows_linear then
    write_cache), and caches holding exactly what write_cache makes of the kernel's own k and v: every row's at its
    position in its slot, nothing else touched."""
    rows = int(rows)
    dtype = torch.bfloat16 if rows == 1 else torch.float16  # the interpreter's tl.dot: see check_kernel
    heads, head_dim, k = 2, 8, 32
    norm, linear = layers(k=k, n=3 * heads * head_dim)
    norm, linear = norm.to(dtype), linear.to(dtype)
    x = (torch.randn(rows, k) * 3 + 1).to(dtype)
    positions = (torch.arange(rows) * 7 + 5) % 10  # 5, 2, 9, ...
    for config in (None, (32, 16, 4, 2)):  # 32 columns: a block across the q/k boundary, and across heads
        cache = dtype if cache_dtype == "model" else getattr(torch, cache_dtype)
        caches = [torch.zeros(rows + 1, heads, 10, head_dim, dtype=cache) for _ in range(6)]
        args = (x, linear.weight, None, linear.bias, norm.weight, norm.bias, None, 3 * heads * head_dim, False, 1e-5)
        got = rl.launch(*args, config=config, cache=(caches[0], caches[1], positions))
        want = rl.rows_linear_to_cache(*args[:6], args[7], args[9], caches[2], caches[3], positions)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
        _, k_new, v_new = got.view(rows, 1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        write_cache(caches[4], caches[5], torch.arange(rows)[:, None], positions[:, None], k_new, v_new)
        for kernel_cache, expected in zip(caches[:2], caches[4:]):
            assert torch.equal(kernel_cache.view(torch.uint8), expected.view(torch.uint8))
        assert torch.count_nonzero(caches[0].float()) > rows * heads * head_dim // 2  # the rows' k, written


@needs_triton
@pytest.mark.parametrize("rows", [1, 3])
def test_qkv_kernel_writes_k_and_v_into_the_caches(rows):
    # a cache in the model's dtype only: the interpreter rounds to FP8 wrongly where rounding carries into the
    # exponent (0.1216 gives 0.0625, not 0.125); the GPU test checks an FP8 cache
    run_interpreted("tests.unit.test_rows_linear", "check_cache_write", rows, "model")
