"""Split-KV decode attention: the partial states merged equal plain attention over each row's positions, and the
Triton kernel equals the torch states: here under Triton's CPU interpreter, where triton is installed beside numpy
1 (CI has no triton), and compiled on a GPU in tests/gpu."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptserve.engine import decode_attention as da
from tests.unit.triton_interpreter import needs_triton, run_interpreted

LAST = torch.tensor([0, 63, 64, 137, 299])  # one position, a block's end and start, mid-block, the cache's end


def case(cache_dtype, heads=4, cache_len=300, dim=16):
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(6, heads, cache_len, dim, generator=gen).to(cache_dtype) for _ in range(2))
    q = torch.randn(len(LAST), heads, dim, generator=gen)
    return q, k, v


def plain(q, k, v):
    """Attention of each row over cache positions 0..LAST[row], row b reading slot b."""
    rows = []
    for b, last in enumerate(LAST.tolist()):
        rows.append(F.scaled_dot_product_attention(q[b, :, None].float(), k[b, :, : last + 1].float(),
                                                   v[b, :, : last + 1].float())[:, 0])
    return torch.stack(rows)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_merged_partial_states_equal_plain_attention(cache_dtype):
    q, k, v = case(cache_dtype)
    assert da.plan(len(LAST), 4, 300) > 1  # several slices, so the merge is exercised
    torch.testing.assert_close(da.merge(*da.reference(q, k, v, LAST)), plain(q, k, v), atol=1e-4, rtol=1e-4)


def test_any_slice_count_merges_to_the_same_attention():
    q, k, v = case(torch.float32)
    for splits in (1, 2, 5, 7):
        m, total, acc = da.reference(q, k, v, LAST, splits)
        assert m.shape == (len(LAST), 4, splits)
        # row 0 sees position 0 alone: its first slice holds it, the others are empty states
        assert (total[0, :, 1:] == 0).all() and (m[0, :, 1:] == da.NO_SCORE).all() and (total[0, :, 0] > 0).all()
        torch.testing.assert_close(da.merge(m, total, acc), plain(q, k, v), atol=1e-4, rtol=1e-4)


def test_plan_spreads_a_batch_of_one_over_the_gpu_and_a_batch_in_fewer_slices():
    # gpt2-large (20 heads) and the 40B (64), 2048 positions and the spare: about ONE_ROW_PROGRAMS at batch 1,
    # about PROGRAMS above it, never more than batch 1's slices
    assert [da.plan(rows, 20, 2049) for rows in (1, 2, 4, 8, 16, 64)] == [20, 20, 14, 7, 4, 1]
    assert [da.plan(rows, 64, 2049) for rows in (1, 2, 4, 8, 16, 64)] == [7, 7, 5, 3, 2, 1]
    assert da.plan(1, 64, 100) == 2  # never more slices than the cache has blocks


def test_each_rows_slices_cover_its_positions():
    splits = da.plan(1, 20, 2049)
    last = torch.tensor([0, 63, 64, 255, 1279, 2047])
    per_split = da.split_len(last, splits)
    assert (per_split % da.BLOCK == 0).all()
    # the slices cover positions 0..last, and slices a block shorter would not
    assert ((splits * per_split > last) & (splits * (per_split - da.BLOCK) <= last)).all()


def test_the_op_on_the_cpu_is_plain_attention():
    """gptserve::decode_attention off CUDA: the torch states merged, in q's dtype."""
    q, k, v = case(torch.float32)
    torch.testing.assert_close(da.decode_attention(q, k, v, LAST), plain(q, k, v), atol=1e-4, rtol=1e-4)
    assert da.decode_attention(q.to(torch.bfloat16), k, v, LAST).dtype == torch.bfloat16


def check_kernel(cache_dtype: str, device: str = "cpu"):
    """The kernel's partial states against the torch ones at the plan and at fewer slices, the merged
    attention of another launch configuration, and the kernel's own merge (run_interpreted calls this under the
    interpreter; tests/gpu calls it with device cuda)."""
    q, k, v = (t.to(device) for t in case(getattr(torch, cache_dtype)))
    q, last = q.to(torch.bfloat16), LAST.to(device)
    splits = da.plan(len(LAST), 4, 300)
    for n in (splits, 2, 1):
        config = (n, da.BLOCK, da.WARPS, da.STAGES)
        for got, want in zip(da.launch(q, k, v, last, config), da.reference(q, k, v, last, n)):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    merged = da.merge(*da.launch(q, k, v, last, (splits + 2, 32, 2, 2)))
    torch.testing.assert_close(merged, da.merge(*da.reference(q, k, v, last)), atol=1e-3, rtol=1e-3)
    for n in (splits, 2, splits):  # merged in the kernel (twice the same: the counters were left zero)
        got = da.launch_merged(q, k, v, last, (n, da.BLOCK, da.WARPS, da.STAGES))
        assert got.dtype == q.dtype and not da.arrivals(q.device, 20).any()
        torch.testing.assert_close(got.float(), da.merge(*da.reference(q, k, v, last, n)), atol=1e-2,
                                   rtol=1e-2)  # bf16 output


# The kernel's loop bound is read from memory (each row's length). Triton's interpreter turns it into a Python int
# through int() of a one-element array, which numpy 2 refuses (seen with triton 3.9 and numpy 2.4 here, and on the
# GPU machine's numpy 2.5). There the compiled kernel is checked against SDPA by tests/gpu instead.
interpreter_reads_loop_bounds = pytest.mark.skipif(
    int(np.__version__.split(".")[0]) >= 2, reason="Triton's interpreter cannot take a loaded loop bound under numpy 2")


@needs_triton
@interpreter_reads_loop_bounds
@pytest.mark.parametrize("cache_dtype", ["bfloat16", "float8_e4m3fn"])
def test_kernel_equals_the_torch_states(cache_dtype):
    run_interpreted("tests.unit.test_decode_attention", "check_kernel", cache_dtype)
