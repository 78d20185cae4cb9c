"""A decode step's block at batch 1 as one persistent Triton kernel: LayerNorm and qkv (k and v into the cache),
split-KV attention, the attention projection, LayerNorm, fc with GELU, and the MLP projection, in one launch.

At batch 1 a gpt2-large block is four fused linears and a split-KV attention, each a few microseconds long: every
kernel starts with idle memory pipes, ramps up and drains, and the fused linears read HBM at 1.45 TB/s (run 80), a
third of its bandwidth. Here one program per SM stays resident for the whole block. It owns an even share of each
linear's output columns (N / programs, so no wave is left half-empty) and streams its weight rows in chunks,
three always in flight (registers, not Triton's pipeliner, so the first chunks of the next phase can be asked for
before the program waits for the phase before: weights depend on nothing). Phases, with a grid-wide barrier between them:
  0 qkv: ln_1, the qkv linear and bias; k and v into the cache at the row's position (rows_linear's epilogue)
  1 attention: work items (head, slice) as decode_attention's programs; the last slice of a head merges them
  2 attention projection, bias, residual x          3 ln_2, fc, bias, GELU
  4 MLP projection, bias, residual (phase 2's output)
The barrier: each program adds one to a counter and waits until it reaches (phases passed) x programs; the last
program to leave zeroes it for the next launch (and CUDA-graph replay). So every program must be resident at once:
the grid is one program per SM. A wait gives up after SPIN_LIMIT polls and counts a timeout, so a launch that
cannot be resident computes wrong numbers rather than hanging the GPU; the GPU tests check that count stays zero.

Registered as the custom op gptserve::decode_block: on CUDA tensors the kernel, on others the ops it replaces
(rows_linear, decode_attention) on the same tensors, as the compiled step ran them before; the kernel's test
reference.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import decode_attention as da
from . import rows_linear as rl

PHASES = 5
CHUNK_BYTES = 16384  # weight bytes a program asks for at once (BLOCK_N x BLOCK_K); three such loads in flight
MAX_BLOCK_N = 64  # output columns a program sums at once; a wider share takes several tiles
WARPS = 8
SPIN_LIMIT = 1 << 22  # polls of the barrier counter before a program gives up (well over a second)
COUNTERS = 3  # after the attention's merge counters: the barrier's arrivals, its departures, its timeouts


def plan(n: int, k: int, programs: int, element_size: int, chunk_bytes: int | None = None) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of a linear phase: a program's share of the N columns in one tile where it fits, and
    chunks of chunk_bytes (default CHUNK_BYTES) of weights."""
    block_n = min(MAX_BLOCK_N, rl.next_power_of_2(-(-n // programs)))
    return block_n, max(16, min(rl.next_power_of_2(k), (chunk_bytes or CHUNK_BYTES) // element_size // block_n))


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # rows_linear's row_stats, widen, finish, decode_attention's attend_slice, tl, and the
    # functions below, as module globals: Triton resolves the names in a called function's source (and its
    # interpreter, in a kernel's) in the module's globals alone
    globals().update(vars(rl.parts()), **vars(da.parts()), tl=tl)

    @triton.jit
    def columns(program, programs, N: tl.constexpr):
        # this program's share [first, end) of N output columns
        return program * N // programs, (program + 1) * N // programs

    @triton.jit
    def row_chunk(x_ptr, pair, K: tl.constexpr, BLOCK_K: tl.constexpr):
        # the row's x at chunk `pair`'s K -> [1, BLOCK_K]
        chunks: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
        ks = ((pair % chunks) * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
        return tl.load(x_ptr + ks, mask=ks < K, other=0.0)

    @triton.jit
    def chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, pair, first, end, K: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, HAS_NORM: tl.constexpr):
        # the loads of chunk `pair` of this program's work: tile pair // chunks (BLOCK_N weight rows), K chunk
        # pair % chunks, and the row's x, LayerNorm weight and bias at those K (asked for with the weights: loaded
        # when summed, their L2 round trip stalled every chunk, run 85); rows past the share masked, so a pair past
        # the last reads no weights -> w [BLOCK_N, BLOCK_K], x, gamma, beta [1, BLOCK_K] (gamma, beta: x without
        # HAS_NORM)
        chunks: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
        cols = first + (pair // chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = ((pair % chunks) * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
        w = tl.load(w_ptr + cols[:, None] * K + ks, mask=(cols < end)[:, None] & (ks < K), other=0.0)
        x = row_chunk(x_ptr, pair, K, BLOCK_K)
        if HAS_NORM:
            return w, x, tl.load(norm_w_ptr + ks, mask=ks < K, other=0.0), tl.load(norm_b_ptr + ks, mask=ks < K,
                                                                                   other=0.0)
        return w, x, x, x

    @triton.jit
    def consume(acc, w, x, gamma, beta, pair, pairs, first, end, x_ptr, mean, rstd, scale_ptr, bias_ptr, res_ptr,
                out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, stride_cache_slot, stride_cache_head,
                N: tl.constexpr, K: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_NORM: tl.constexpr,
                HAS_RESIDUAL: tl.constexpr, GELU: tl.constexpr, INT8_BITS: tl.constexpr, TO_CACHE: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # acc [BLOCK_N, BLOCK_K] plus chunk `pair` (chunk()'s loads) times the row, summed over K once a tile, at its
        # epilogue (a sum a chunk synchronised the warps each time)
        chunks: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
        rows = tl.arange(0, 1)
        if HAS_NORM:  # the normalised row rounded to x's dtype, as LayerNorm's output (rows_linear's normalise)
            x = ((x.to(tl.float32) - mean[:, None]) * rstd[:, None] * gamma.to(tl.float32)
                 + beta.to(tl.float32)).to(x.dtype)
        acc += widen(w, INT8_BITS) * x.to(tl.float32)
        if (pair % chunks == chunks - 1) & (pair < pairs):  # the tile's last chunk: its epilogue
            cols = first + (pair // chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
            finish(tl.sum(acc, axis=1)[None, :], rows, cols, rows < 1, cols < end, scale_ptr, bias_ptr, res_ptr,
                   out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, N, 0, 0, stride_cache_slot, stride_cache_head,
                   HAS_SCALE, True, HAS_RESIDUAL, GELU, TO_CACHE, HEAD_DIM)
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        return acc

    @triton.jit
    def linear(w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3, x_ptr, w_ptr, scale_ptr, bias_ptr,
               norm_w_ptr, norm_b_ptr, res_ptr, out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, eps, stride_cache_slot,
               stride_cache_head, program, programs, N: tl.constexpr, K: tl.constexpr, HAS_SCALE: tl.constexpr,
               HAS_NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GELU: tl.constexpr, INT8_BITS: tl.constexpr,
               TO_CACHE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # out[share] = residual + gelu(norm(x) @ W[share]^T * scale + bias) for the one row x [K]; w0..b3: the
        # loads of the share's first four chunks (first_chunks()), already asked for. Four buffers, each refilled in
        # place right after it is summed: three chunks stay in flight, and no register copy waits for a load (a
        # rotation w = w_a, w_a = w_b did, and ran at half the ops' speed: run 83)
        chunks: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
        first, end = columns(program, programs, N)
        rows = tl.arange(0, 1)
        if HAS_NORM:
            mean, rstd = row_stats(x_ptr + rows[:, None], rows < 1, K, eps, 1, BLOCK_K)
        else:
            mean, rstd = tl.zeros((1,), tl.float32), tl.zeros((1,), tl.float32)
        pairs = tl.cdiv(end - first, BLOCK_N) * chunks
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for pair in range(0, pairs, 4):
            acc = consume(acc, w0, x0, g0, b0, pair + 0, pairs, first, end, x_ptr, mean, rstd, scale_ptr,
                          bias_ptr, res_ptr, out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, stride_cache_slot,
                          stride_cache_head, N, K, HAS_SCALE, HAS_NORM, HAS_RESIDUAL, GELU, INT8_BITS, TO_CACHE,
                          HEAD_DIM, BLOCK_N, BLOCK_K)
            w0, x0, g0, b0 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, pair + 4, first, end, K, BLOCK_N,
                                   BLOCK_K, HAS_NORM)
            acc = consume(acc, w1, x1, g1, b1, pair + 1, pairs, first, end, x_ptr, mean, rstd, scale_ptr,
                          bias_ptr, res_ptr, out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, stride_cache_slot,
                          stride_cache_head, N, K, HAS_SCALE, HAS_NORM, HAS_RESIDUAL, GELU, INT8_BITS, TO_CACHE,
                          HEAD_DIM, BLOCK_N, BLOCK_K)
            w1, x1, g1, b1 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, pair + 5, first, end, K, BLOCK_N,
                                   BLOCK_K, HAS_NORM)
            acc = consume(acc, w2, x2, g2, b2, pair + 2, pairs, first, end, x_ptr, mean, rstd, scale_ptr,
                          bias_ptr, res_ptr, out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, stride_cache_slot,
                          stride_cache_head, N, K, HAS_SCALE, HAS_NORM, HAS_RESIDUAL, GELU, INT8_BITS, TO_CACHE,
                          HEAD_DIM, BLOCK_N, BLOCK_K)
            w2, x2, g2, b2 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, pair + 6, first, end, K, BLOCK_N,
                                   BLOCK_K, HAS_NORM)
            acc = consume(acc, w3, x3, g3, b3, pair + 3, pairs, first, end, x_ptr, mean, rstd, scale_ptr,
                          bias_ptr, res_ptr, out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, stride_cache_slot,
                          stride_cache_head, N, K, HAS_SCALE, HAS_NORM, HAS_RESIDUAL, GELU, INT8_BITS, TO_CACHE,
                          HEAD_DIM, BLOCK_N, BLOCK_K)
            w3, x3, g3, b3 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, pair + 7, first, end, K, BLOCK_N,
                                   BLOCK_K, HAS_NORM)

    @triton.jit
    def first_chunks(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, program, programs, N: tl.constexpr, K: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_NORM: tl.constexpr):
        # chunk()'s loads of the share's first four chunks, flattened: w0, x0, g0, b0, w1, ...
        first, end = columns(program, programs, N)
        w0, x0, g0, b0 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, 0, first, end, K, BLOCK_N, BLOCK_K, HAS_NORM)
        w1, x1, g1, b1 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, 1, first, end, K, BLOCK_N, BLOCK_K, HAS_NORM)
        w2, x2, g2, b2 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, 2, first, end, K, BLOCK_N, BLOCK_K, HAS_NORM)
        w3, x3, g3, b3 = chunk(w_ptr, x_ptr, norm_w_ptr, norm_b_ptr, 3, first, end, K, BLOCK_N, BLOCK_K, HAS_NORM)
        return w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3

    @triton.jit
    def grid_sync(counters_ptr, target, SPIN_LIMIT: tl.constexpr):
        # counters: [arrivals, departures, timeouts]; wait until `target` arrivals (this program's included)
        tl.debug_barrier()  # every thread's stores before the release
        tl.atomic_add(counters_ptr, 1, sem="release")
        spins = 0
        while (tl.atomic_add(counters_ptr, 0, sem="acquire") < target) & (spins < SPIN_LIMIT):
            spins += 1
        if spins >= SPIN_LIMIT:
            tl.atomic_add(counters_ptr + 2, 1)

    globals().update(columns=columns, row_chunk=row_chunk, chunk=chunk, consume=consume, linear=linear,
                     first_chunks=first_chunks, grid_sync=grid_sync)

    @triton.jit
    def decode_block_kernel(x_ptr, out_ptr, qkv_ptr, y_ptr, x2_ptr, h_ptr, m_ptr, l_ptr, acc_ptr, counters_ptr,
                            k_cache_ptr, v_cache_ptr, pos_ptr,
                            ln1_w, ln1_b, qkv_w, qkv_s, qkv_b, proj_w, proj_s, proj_b,
                            ln2_w, ln2_b, fc_w, fc_s, fc_b, mlp_w, mlp_s, mlp_b,
                            eps, scale, working, stride_cache_slot, stride_cache_head,
                            C: tl.constexpr, FF: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                            SPLITS: tl.constexpr, SPLITS_POW2: tl.constexpr, ATTENTION_BLOCK: tl.constexpr,
                            ATTENTION_STAGES: tl.constexpr,
                            NO_SCORE: tl.constexpr, HAS_SCALE: tl.constexpr, INT8_BITS: tl.constexpr,
                            QKV_N: tl.constexpr, QKV_K: tl.constexpr, PROJ_N: tl.constexpr, PROJ_K: tl.constexpr,
                            FC_N: tl.constexpr, FC_K: tl.constexpr, MLP_N: tl.constexpr, MLP_K: tl.constexpr,
                            FIRST: tl.constexpr, LAST: tl.constexpr, SPIN_LIMIT: tl.constexpr):
        # x, out, y, x2: [C]; qkv: [3C]; h: [FF]; m, l: [H, SPLITS] fp32; acc: [H, SPLITS, D] fp32; counters:
        # [H + 3] int32, zero (H merge counters, then grid_sync's); caches [slots, H, S, D], the row in slot 0 at
        # position pos[0]; weights [N, K] contiguous (scales [>= N] with HAS_SCALE), norms and biases [N].
        # Phases FIRST..LAST run, a barrier between each two (a launch of one phase has none)
        program, programs = tl.program_id(0), tl.num_programs(0)
        barrier = counters_ptr + H
        if FIRST <= 0 and LAST >= 0:
            w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3 = first_chunks(
                qkv_w, x_ptr, ln1_w, ln1_b, program, programs, 3 * C, C, QKV_N, QKV_K, True)
            linear(w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3, x_ptr, qkv_w, qkv_s, qkv_b, ln1_w,
                   ln1_b, x_ptr, qkv_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, eps, stride_cache_slot,
                   stride_cache_head, program, programs, 3 * C, C, HAS_SCALE, True, False, False, INT8_BITS, True, D,
                   QKV_N, QKV_K)
        if FIRST <= 1 and LAST >= 1:
            if FIRST < 1:
                grid_sync(barrier, (1 - FIRST) * programs, SPIN_LIMIT)
            for item in range(program, H * SPLITS, programs):  # (head, slice) of the one row, slot 0
                attend_slice(qkv_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, y_ptr, counters_ptr,
                             scale, working, 0, item // SPLITS, item % SPLITS, H, SPLITS, 0, D, 0,
                             stride_cache_head, D, ATTENTION_BLOCK, D, NO_SCORE, True, SPLITS_POW2,
                             ATTENTION_STAGES)
        if FIRST <= 2 and LAST >= 2:  # the weights asked for before the barrier, the row after it
            w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3 = first_chunks(
                proj_w, y_ptr, ln1_w, ln1_b, program, programs, C, C, PROJ_N, PROJ_K, False)
            if FIRST < 2:
                grid_sync(barrier, (2 - FIRST) * programs, SPIN_LIMIT)
                x0, x1, x2, x3 = (row_chunk(y_ptr, 0, C, PROJ_K), row_chunk(y_ptr, 1, C, PROJ_K),
                                  row_chunk(y_ptr, 2, C, PROJ_K), row_chunk(y_ptr, 3, C, PROJ_K))
            linear(w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3, y_ptr, proj_w, proj_s, proj_b, ln1_w, ln1_b, x_ptr,
                   x2_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, eps, stride_cache_slot, stride_cache_head, program,
                   programs, C, C, HAS_SCALE, False, True, False, INT8_BITS, False, D, PROJ_N, PROJ_K)
        if FIRST <= 3 and LAST >= 3:  # the weights asked for before the barrier, the row after it
            w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3 = first_chunks(
                fc_w, x2_ptr, ln2_w, ln2_b, program, programs, FF, C, FC_N, FC_K, True)
            if FIRST < 3:
                grid_sync(barrier, (3 - FIRST) * programs, SPIN_LIMIT)
                x0, x1, x2, x3 = (row_chunk(x2_ptr, 0, C, FC_K), row_chunk(x2_ptr, 1, C, FC_K),
                                  row_chunk(x2_ptr, 2, C, FC_K), row_chunk(x2_ptr, 3, C, FC_K))
            linear(w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3, x2_ptr, fc_w, fc_s, fc_b, ln2_w, ln2_b, x_ptr,
                   h_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, eps, stride_cache_slot, stride_cache_head, program,
                   programs, FF, C, HAS_SCALE, True, False, True, INT8_BITS, False, D, FC_N, FC_K)
        if FIRST <= 4 and LAST >= 4:  # the weights asked for before the barrier, the row after it
            w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3 = first_chunks(
                mlp_w, h_ptr, ln2_w, ln2_b, program, programs, C, FF, MLP_N, MLP_K, False)
            if FIRST < 4:
                grid_sync(barrier, (4 - FIRST) * programs, SPIN_LIMIT)
                x0, x1, x2, x3 = (row_chunk(h_ptr, 0, FF, MLP_K), row_chunk(h_ptr, 1, FF, MLP_K),
                                  row_chunk(h_ptr, 2, FF, MLP_K), row_chunk(h_ptr, 3, FF, MLP_K))
            linear(w0, x0, g0, b0, w1, x1, g1, b1, w2, x2, g2, b2, w3, x3, g3, b3, h_ptr, mlp_w, mlp_s, mlp_b, ln2_w, ln2_b, x2_ptr,
                   out_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, eps, stride_cache_slot, stride_cache_head, program,
                   programs, C, FF, HAS_SCALE, False, True, False, INT8_BITS, False, D, MLP_N, MLP_K)
        if FIRST < LAST:  # the last program to leave zeroes the barrier: nobody polls it any more
            tl.debug_barrier()
            if tl.atomic_add(barrier + 1, 1, sem="acq_rel") == programs - 1:
                tl.store(barrier, 0)
                tl.store(barrier + 1, 0)

    return decode_block_kernel


def launch(x, norms, linears, eps: float, k_cache, v_cache, positions, programs: int | None = None,
           phase_launches: bool = False, config: tuple[int, int] | None = None):
    """The kernel on any tensors Triton takes (CUDA, or CPU under TRITON_INTERPRET=1, there with phase_launches:
    the interpreter runs programs one after another, so a barrier would wait forever). phase_launches: one launch
    a phase, no barriers; programs: the grid (default the SM count); config: (CHUNK_BYTES, WARPS) in
    place of the module's (bench sweeps them). -> out [1, C]."""
    (ln1_w, ln1_b, ln2_w, ln2_b), weights = norms, linears
    _, c = x.shape
    _, heads, cache_len, head_dim = k_cache.shape
    ff = weights[9].shape[1]
    assert x.shape == (1, c) and positions.shape == (1,) and heads * head_dim == c
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1 and k_cache.stride(2) == head_dim
    for (weight, scale, bias), (n, k) in zip(zip(*[iter(weights)] * 3), [(3 * c, c), (c, c), (ff, c), (c, ff)]):
        assert weight.shape[0] >= n and weight.shape[1] == k and weight.is_contiguous() and bias is not None
        assert (scale is None) == (weights[1] is None), "every linear's weights in one format"
    chunk_bytes, warps = config or (CHUNK_BYTES, WARPS)
    programs = programs or sm_count(x.device.index or 0)
    splits = da.plan(heads, cache_len)
    x = x.contiguous()
    qkv, y, x2, h, out = (x.new_empty(n) for n in (3 * c, c, c, ff, c))
    m, total = (torch.empty((heads, splits), dtype=torch.float32, device=x.device) for _ in range(2))
    acc = torch.empty((heads, splits, head_dim), dtype=torch.float32, device=x.device)
    blocks = [plan(n, k, programs, weights[0].element_size(), chunk_bytes)
              for n, k in [(3 * c, c), (c, c), (ff, c), (c, ff)]]
    weights = [w if w is not None else weights[0] for w in weights]  # a pointer the kernel never reads
    for first, last in [(p, p) for p in range(PHASES)] if phase_launches else [(0, PHASES - 1)]:
        _kernel()[(programs,)](
            x, out, qkv, y, x2, h, m, total, acc, da.arrivals(x.device, heads + COUNTERS), k_cache, v_cache,
            positions.contiguous(), ln1_w, ln1_b, *weights[:6], ln2_w, ln2_b, *weights[6:],
            eps, head_dim ** -0.5, da.working_splits(1, heads, splits, da.WORKING_PROGRAMS), *k_cache.stride()[:2],
            C=c, FF=ff, H=heads, D=head_dim, SPLITS=splits, SPLITS_POW2=1 << (splits - 1).bit_length(),
            ATTENTION_BLOCK=da.BLOCK, ATTENTION_STAGES=da.STAGES, NO_SCORE=da.NO_SCORE, HAS_SCALE=linears[1] is not None,
            INT8_BITS=weights[0].dtype == torch.int8, QKV_N=blocks[0][0], QKV_K=blocks[0][1], PROJ_N=blocks[1][0],
            PROJ_K=blocks[1][1], FC_N=blocks[2][0], FC_K=blocks[2][1], MLP_N=blocks[3][0], MLP_K=blocks[3][1],
            FIRST=first, LAST=last, SPIN_LIMIT=SPIN_LIMIT, num_warps=warps, num_stages=1)
    return out.view(1, c)


def reference(x, norms, linears, eps: float, k_cache, v_cache, positions):
    """The ops the kernel replaces, on the same tensors: what the compiled step ran for a fused block at batch 1
    (rows_linear and decode_attention: their kernels on CUDA, their torch arithmetic elsewhere)."""
    (ln1_w, ln1_b, ln2_w, ln2_b) = norms
    qkv_w, qkv_s, qkv_b, proj_w, proj_s, proj_b, fc_w, fc_s, fc_b, mlp_w, mlp_s, mlp_b = linears
    c, (_, heads, _, head_dim), ff = x.shape[1], k_cache.shape, mlp_w.shape[1]
    qkv = rl.rows_linear_to_cache(x, qkv_w, qkv_s, qkv_b, ln1_w, ln1_b, 3 * c, eps, k_cache, v_cache, positions)
    y = da.decode_attention(qkv[:, :c].view(1, heads, head_dim), k_cache, v_cache, positions).view(1, c)
    x = rl.rows_linear(y, proj_w, proj_s, proj_b, None, None, x, c, False, eps)
    h = rl.rows_linear(x, fc_w, fc_s, fc_b, ln2_w, ln2_b, None, ff, True, eps)
    return rl.rows_linear(h, mlp_w, mlp_s, mlp_b, None, None, x, c, False, eps)


@torch.library.custom_op("gptserve::decode_block", mutates_args=("k_cache", "v_cache"))
def decode_block(x: torch.Tensor, norms: list[torch.Tensor], linears: list[Optional[torch.Tensor]], eps: float,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One block of a decode step at batch 1: x [1, C] -> the block's output [1, C]; writes the row's k and v
    into the caches [slots, H, S, D] (slot 0, position positions[0]). norms: ln_1's and ln_2's weight and bias;
    linears: weight, scale (None for bf16) and bias of qkv, attention projection, fc and MLP projection
    (block_tensors())."""
    if x.is_cuda:
        return launch(x, norms, linears, eps, k_cache, v_cache, positions)
    return reference(x, norms, linears, eps, k_cache, v_cache, positions)


@decode_block.register_fake
def _(x, norms, linears, eps, k_cache, v_cache, positions):
    return torch.empty_like(x)


def block_tensors(block: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor | None], float]:
    """(norms, linears, eps) of a model Block, as decode_block takes them."""
    linears = []
    for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
        linears += [*rl.weight_and_scale(layer), layer.bias]
    norms = [block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias]
    return norms, linears, block.ln_1.eps
