"""Split-KV decode attention (flash-decoding): each row's one query reads its slot's cache where it lies.

At decode, SDPA gets q [B, H, 1, D] against the rows' caches sliced to kv_len: B*H programs (20 for gpt2-large at
batch 1, on a GPU of 132 SMs), and an FP8 cache is first converted whole to bf16. Here every (row, head) is split
into SPLITS slices of that row's positions 0..last (a count set per launch; the kernel sizes the slices from the
row's last position, read on the device, so nothing in a launch depends on the positions: one CUDA graph of the
step serves every length); a program reads its slice in the cache's own dtype, widens it in registers and writes a
partial softmax state (running max, sum, weighted values). The last program of each (row, head) to finish, counted
by an atomic counter, merges the slices' states (as merge() does) and writes the attention output: merged after the
kernel, the compiled step made three small kernels a layer of it, and the step was slower by 7% (gpt2-large, batch
1) and 1.4% (the 40B's FP8 cache, batch 16; runs 53 and 54, docs/benchmarks.md). plan() sets SPLITS at each launch
from the rows, heads and cache capacity: a batch of many rows reads each row in fewer, longer slices. The partial
states live inside the op, so the compiled step's shapes do not depend on it.

Registered as the custom op gptserve::decode_attention: on CUDA tensors the Triton kernel, on others the same
computed with torch (reference() merged: what the kernel is tested against, and the CPU path).
"""
from __future__ import annotations

import functools

import torch

BLOCK = 64  # cache positions per inner step of a program
# plan()'s targets, in programs (rows * heads * SPLITS) a launch. At batch 1, about three waves of an H100/H200's
# 132 SMs (run 89, bench.decode_attention_sweep on the H200: gpt2-large's 20 heads in 20 slices 6.1 us a layer
# against 7.4 in 13, the 40B's 64 in 7 slices 13.3 against 16.1 in 4). Past batch 1 the rows read their caches in
# fewer, longer slices, about 8 waves in all (2026-12-01: gpt2-large's bf16 cache 6-12% faster at batches 8-64,
# the 40B's FP8 cache 2 slices a row at batch 16, its decode step 16.42 against 16.78 ms; 5% slower at its batch 8)
ONE_ROW_PROGRAMS = 400
PROGRAMS = 1056
WARPS, STAGES = 2, 3  # 40B, FP8 cache: 1.06x / 1.29x / 1.48x faster than 4 warps at batch 1 / 4 / 16 (run 29)
NO_SCORE = -1e30  # the running max of a slice no visible position reached: exp() of it against any real max is 0


def plan(rows: int, heads: int, cache_len: int) -> int:
    """SPLITS, the slices of every (row, head) of a launch: about ONE_ROW_PROGRAMS programs at batch 1, PROGRAMS
    above it, never more slices than batch 1's nor than the cache has blocks, at least one."""
    most = min(-(-cache_len // BLOCK), -(-ONE_ROW_PROGRAMS // heads))
    return max(1, min(most, -(-PROGRAMS // (rows * heads))))


def split_len(last: torch.Tensor, splits: int) -> torch.Tensor:
    """Positions per slice of each row (last: [B], its last visible position): the slices cover positions
    0..last in whole blocks, so a short row keeps every slice busy and a row never reads past its own end."""
    blocks = (last + BLOCK) // BLOCK  # blocks of last + 1 positions
    return (blocks + splits - 1) // splits * BLOCK


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q_ptr, k_ptr, v_ptr, last_ptr, m_ptr, l_ptr, acc_ptr, out_ptr, arrived_ptr, scale,
                                stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                                BLOCK: tl.constexpr, D: tl.constexpr, NO_SCORE: tl.constexpr,
                                MERGE: tl.constexpr, SPLITS_POW2: tl.constexpr):
        # q: [B, H, D]; k, v: [slots, H, S, D], row b = slot b; last: [B] int64; m, l: [B, H, SPLITS] fp32;
        # acc: [B, H, SPLITS, D] fp32; with MERGE: out [B, H, D] in q's dtype, arrived [>= B*H] int32, all zero
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        heads, splits = tl.num_programs(1), tl.num_programs(2)
        last = tl.load(last_ptr + b)
        per_split = ((last + BLOCK) // BLOCK + splits - 1) // splits * BLOCK  # split_len(), read on the device
        # this slice's positions up to the row's last: none (an empty state) where the slice starts past it
        length = tl.minimum(per_split, last + 1 - s * per_split)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d).to(tl.float32) * scale
        m = -1.0e30  # NO_SCORE; plain floats as loop-carried scalars, as flash-decoding kernels keep them
        total = 0.0
        acc = tl.zeros((D,), tl.float32)
        cache = b * stride_kb + h * stride_kh
        for offset in range(0, length, BLOCK):
            p = s * per_split + offset + tl.arange(0, BLOCK)
            visible = p <= last
            kv = cache + p[:, None] * stride_ks + d[None, :]
            k = tl.load(k_ptr + kv, mask=visible[:, None], other=0.0).to(tl.float32)  # [BLOCK, D]
            v = tl.load(v_ptr + kv, mask=visible[:, None], other=0.0).to(tl.float32)  # issued beside k's load
            score = tl.where(visible, tl.sum(k * q[None, :], axis=1), NO_SCORE)
            m_new = tl.maximum(m, tl.max(score, axis=0))
            weight = tl.where(visible, tl.exp(score - m_new), 0.0)
            rescale = tl.exp(m - m_new)
            acc = acc * rescale + tl.sum(weight[:, None] * v, axis=0)
            total = total * rescale + tl.sum(weight, axis=0)
            m = m_new
        head = b * heads + h
        state = head * splits + s
        tl.store(m_ptr + state, m)
        tl.store(l_ptr + state, total)
        tl.store(acc_ptr + state * D + d, acc)
        if MERGE:
            tl.debug_barrier()  # every thread's stores before the release below
            if tl.atomic_add(arrived_ptr + head, 1, sem="acq_rel") == splits - 1:  # the last slice: merge them all
                j = tl.arange(0, SPLITS_POW2)
                ours = j < splits
                slices = head * splits + j  # [SPLITS_POW2]; read from L2, where the other programs wrote them
                ms = tl.load(m_ptr + slices, mask=ours, other=NO_SCORE, cache_modifier=".cg")
                totals = tl.load(l_ptr + slices, mask=ours, other=0.0, cache_modifier=".cg")
                accs = tl.load(acc_ptr + slices[:, None] * D + d[None, :], mask=ours[:, None], other=0.0,
                               cache_modifier=".cg")  # [SPLITS_POW2, D]
                weight = tl.exp(ms - tl.max(ms, axis=0))  # merge(): 0 for slices no visible position reached
                out = tl.sum(accs * weight[:, None], axis=0) / tl.sum(totals * weight, axis=0)
                tl.store(out_ptr + head * D + d, out.to(out_ptr.dtype.element_ty))
                tl.store(arrived_ptr + head, 0)  # zero again for the next launch (and graph replay)

    return decode_attention_kernel


_ARRIVALS: list[torch.Tensor] = []  # every counter buffer made, kept: captured CUDA graphs hold their addresses


def arrivals(device: torch.device, pairs: int) -> torch.Tensor:
    """Zeroed int32 counters for `pairs` (row, head) pairs on `device`, shared by every merged launch there: each
    launch leaves them zero again, and the engine runs its launches on one stream, one at a time."""
    for counters in _ARRIVALS:
        if counters.device == device and counters.numel() >= pairs:
            return counters
    assert device.type != "cuda" or not torch.cuda.is_current_stream_capturing(), "make them before a capture"
    counters = torch.zeros(max(pairs, 4096), dtype=torch.int32, device=device)
    _ARRIVALS.append(counters)
    return counters


def launch(q, k_cache, v_cache, last, config: tuple[int, int, int, int] | None = None, **options):
    """The kernel on any tensors Triton takes (CUDA, or CPU under TRITON_INTERPRET=1), without its merge: the
    partial states, which the tests compare with reference() slice by slice. options: more of Triton's launch
    options (bench.split_kv_variants passes maxnreg). config: (SPLITS, BLOCK, num_warps, num_stages) in place of
    (plan(), BLOCK, WARPS, STAGES); bench.decode_attention_sweep tries several. Any of them merges to the same
    attention; reference() reproduces the states of a SPLITS at BLOCK."""
    return _run(q, k_cache, v_cache, last, config, merged=False, **options)[:3]


def launch_merged(q, k_cache, v_cache, last, config: tuple[int, int, int, int] | None = None):
    """launch() with the slices merged in the kernel, as the engine runs it: the attention output [B, H, D] in q's
    dtype."""
    return _run(q, k_cache, v_cache, last, config, merged=True)[3]


def _run(q, k_cache, v_cache, last, config, merged: bool, **options):
    rows, heads, dim = q.shape
    splits, block, warps, stages = config or (plan(rows, heads, k_cache.shape[2]), BLOCK, WARPS, STAGES)
    m = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    total = torch.empty_like(m)
    acc = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=q.device)
    out = torch.empty((rows, heads, dim), dtype=q.dtype, device=q.device) if merged else None
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1 and q.stride(2) == 1
    _kernel()[(rows, heads, splits)](
        q, k_cache, v_cache, last, m, total, acc, out if merged else m,
        arrivals(q.device, rows * heads) if merged else m, dim ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK=block, D=dim, NO_SCORE=NO_SCORE, MERGE=merged, SPLITS_POW2=1 << (splits - 1).bit_length(),
        num_warps=warps, num_stages=stages, **options)
    return m, total, acc, out


def reference(q, k_cache, v_cache, last, splits: int | None = None):
    """The kernel's partial states computed with torch: [B, H, SPLITS] max and sum, [B, H, SPLITS, D] values
    (SPLITS as given, default the plan's)."""
    rows, heads, dim = q.shape
    cache_len = k_cache.shape[2]
    splits = splits or plan(rows, heads, cache_len)
    per_split = split_len(last, splits)  # [B]
    j = torch.arange(int(per_split.max()), device=q.device)
    s = torch.arange(splits, device=q.device)[None, :, None]
    p = s * per_split[:, None, None] + j  # [B, SPLITS, P]
    visible = (j < per_split[:, None, None]) & (p <= last[:, None, None])
    b = torch.arange(rows, device=q.device)[:, None, None]
    p = p.clamp(max=cache_len - 1)
    k = k_cache[b, :, p].float().permute(0, 3, 1, 2, 4)  # [B, SPLITS, P, H, D] -> [B, H, SPLITS, P, D]
    v = v_cache[b, :, p].float().permute(0, 3, 1, 2, 4)
    score = torch.einsum("bhd,bhspd->bhsp", q.float() * dim ** -0.5, k)
    score = score.masked_fill(~visible[:, None], NO_SCORE)
    m = score.amax(-1)  # [B, H, SPLITS]
    weight = torch.exp(score - m[..., None]) * visible[:, None]
    acc = torch.einsum("bhsp,bhspd->bhsd", weight, v)
    return m, weight.sum(-1), acc


@torch.library.custom_op("gptserve::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     last: torch.Tensor) -> torch.Tensor:
    """q [B, H, D] of rows (slots) 0..B-1; caches [slots, H, S, D]; last [B]: each row's last visible position ->
    attention output [B, H, D] in q's dtype, each row over its cache positions 0..last[row]."""
    if q.is_cuda:
        return launch_merged(q, k_cache, v_cache, last)
    return merge(*reference(q, k_cache, v_cache, last)).to(q.dtype)


@decode_attention.register_fake
def _(q, k_cache, v_cache, last):
    return q.new_empty(q.shape)


def merge(m: torch.Tensor, total: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Attention output [B, H, D] (fp32) from the slices' partial states."""
    weight = torch.exp(m - m.amax(-1, keepdim=True))  # [B, H, SPLITS]: 0 for slices with no visible position
    return (acc * weight[..., None]).sum(2) / (total * weight).sum(-1, keepdim=True)

