"""GPT-2 decoder (nanoGPT shape) with a static, slot-addressed KV cache.

Shapes: B rows, T tokens per row, H heads, D head dim, S cache positions, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_reference, get_attention
from .config import ModelConfig
from .decode_attention import decode_attention
from .kv_cache import KVCache
from .rows_linear import MAX_ROWS, fused_linear


@dataclass
class CachedStep:
    """What every layer of one cached forward shares, computed once: where to write (slot_index, input_pos
    [B, T]), what to read (rows, the first kv_len positions), the attention backend's mask (None when attention
    reads straight from the cache: from_cache, split-KV's decode steps), and whether each block's linear layers
    run as fused kernels (one-token forwards of at most MAX_ROWS rows: decode steps; decode_linears=fused, or
    by_batch and one_row at batch 1).

    Sizes a compiled region must not specialise on come from tensor shapes: kv_len is kv_len_marker's length, and
    rows None (a decode step: rows 0..B-1) takes B from the activations.
    """

    input_pos: torch.Tensor
    rows: object  # slice, index tensor, or None: rows 0..B-1
    slot_index: torch.Tensor
    kv_len_marker: torch.Tensor  # [kv_len]; only its length is read
    mask: object
    fused: bool
    from_cache: bool = False

    @property
    def kv_len(self):
        return self.kv_len_marker.shape[0]

    def mark_dynamic(self, *activations: torch.Tensor | None):
        """mark_dynamic() of this step's tensors and the activations, before a call to compiled code."""
        batched = [self.input_pos, self.slot_index, *(a for a in activations if a is not None)]
        if isinstance(self.mask, torch.Tensor):  # sdpa's [B, 1, T, kv_len]
            torch._dynamo.maybe_mark_dynamic(self.mask, 3)
            batched.append(self.mask)
        mark_dynamic(self.kv_len_marker, *batched)


def mark_dynamic(kv_len_marker: torch.Tensor, *batched: torch.Tensor):
    """Tell the compiler which sizes vary between calls: the KV length (kv_len_marker's dim 0) always, the batch
    (dim 0 of `batched`) when it is not 1: batch 1 keeps a graph of its own."""
    torch._dynamo.maybe_mark_dynamic(kv_len_marker, 0)
    if batched and batched[0].shape[0] > 1:
        for t in batched:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def run_block(block: "Block", x: torch.Tensor, pending: torch.Tensor | None, step: CachedStep):
    """One block of a cached forward: x + pending in, (x, pending) out, the block's output being their sum. The
    engine compiles this function once for every layer of a decode step. A compiled region ends at its block, so
    each block leaves its last residual add pending: the next call makes it, fused with its first LayerNorm, as
    when the compiler sees the whole step. Fused blocks (step.fused) fuse that add into a linear: nothing pends."""
    if pending is not None:
        x = x + pending
    if step.fused:
        return block.forward_fused(x, step), None
    return block.forward_pending(x, step)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.cache: KVCache | None = None
        self.attention = get_attention("sdpa")

    def forward(self, x: torch.Tensor, step: CachedStep | None) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), step))

    def attend(self, qkv: torch.Tensor, step: CachedStep | None, written: bool = False) -> torch.Tensor:
        """qkv [B, T, 3C] -> attention output [B, T, C], before the projection; a cached step (step not None)
        writes k and v to the cache first, unless a decode step's qkv kernel has (written)."""
        B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3x [B, H, T, D]
        if step is None:  # reference path: the whole sequence, no cache
            y = causal_reference(q, k, v)
        elif step.from_cache:  # decode, rows 0..B-1
            if not written:
                self.cache.write(step.slot_index, step.input_pos, k, v)
            y = decode_attention(q[:, :, 0], self.cache.k, self.cache.v, step.input_pos[:, 0])[:, :, None]
        else:
            k_all, v_all = self.cache.update(step.rows, step.slot_index, step.input_pos, k, v, step.kv_len)
            y = self.attention.attend(q, k_all, v_all, step.mask)  # k_all, v_all: [B, H, kv_len, D]
        return y.transpose(1, 2).reshape(B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, step: CachedStep | None):
        """The reference path's block (no cache when step is None)."""
        x, pending = self.forward_pending(x, step)
        return x + pending

    def forward_pending(self, x, step: CachedStep | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block as (x, MLP output): its output is their sum, left to the caller."""
        x = x + self.attn(self.ln_1(x), step)
        return x, self.mlp(self.ln_2(x))

    def forward_fused(self, x: torch.Tensor, step: CachedStep) -> torch.Tensor:
        """The same block in four fused linears (rows_linear): each takes its LayerNorm, bias, GELU or residual
        add with it, where torch launches them apart; qkv writes the cache too in decode steps that attend from
        it."""
        B, T, C = x.shape
        x = x.view(B * T, C)
        # a decode step over the cache (rows 0..B-1 in slots 0..B-1, one token each): the kernel writes k and v
        cache = self.attn.cache
        to_cache = (cache.k, cache.v, step.input_pos[:, 0]) if step.from_cache else None
        qkv = fused_linear(x, self.attn.qkv, norm=self.ln_1, to_cache=to_cache)  # [BT, 3C]
        y = self.attn.attend(qkv.view(B, T, 3 * C), step, written=to_cache is not None).reshape(B * T, C)
        x = fused_linear(y, self.attn.proj, residual=x)
        h = fused_linear(x, self.mlp.fc, norm=self.ln_2, gelu=True)  # [BT, 4C]
        return fused_linear(h, self.mlp.proj, residual=x).view(B, T, C)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.decode_linears = "torch"

    def setup_cache(self, slots: int, length: int, dtype, attention_backend: str, decode_linears: str = "torch"):
        """Static KV caches of `slots` sequences of `length` positions. decode_linears: in decode steps of at
        most MAX_ROWS rows, "fused" runs every linear layer as one fused kernel, "head" the final LayerNorm and LM
        head alone, "torch" none, "by_batch" fused at batch 1 and head above, "one_row" fused at batch 1 alone."""
        device = self.wte.weight.device
        attention = get_attention(attention_backend)
        self.decode_linears = decode_linears
        # CachedStep.kv_len_marker: a slice of it carries kv_len into compiled code as a size the compiler can
        # keep dynamic (one graph for every length)
        self.register_buffer("kv_len_marker", torch.empty(length, dtype=torch.int8, device=device), persistent=False)
        for block in self.blocks:
            block.attn.cache = KVCache(slots, self.cfg.n_head, length, self.cfg.head_dim, dtype, device)
            block.attn.attention = attention

    @property
    def decodes_from_cache(self) -> bool:
        """Whether decode steps attend straight over the cache, each row up to its own position (split-KV)."""
        return self.blocks[0].attn.attention.decodes_from_cache

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor, rows, last_index: torch.Tensor | None = None,
                kv_len: int | None = None, run: Callable = run_block):
        """Cached forward. idx, input_pos: [B, T]; rows: slots of the B rows (slice, index tensor, or None: slots
        0..B-1); kv_len: cache positions attention reads (every input_pos must be below it; None: all); run: how
        each block runs (run_block, or the engine's compiled region of it).

        Returns logits [B, V] at last_index [B] when given, else [B, T, V].
        """
        x, pending = self.wte(idx), self.wpe(input_pos)  # [B, T, C] each: the first block adds them
        B, T, C = x.shape
        attn = self.blocks[0].attn
        kv_len = attn.cache.length if kv_len is None else kv_len
        # decode_linears first: comparing B with MAX_ROWS would make the compiler guard on it (B <= 16), and the
        # first decode step over 24 rows would compile the whole step again (62 s on the H200)
        # (B == 1 adds no guard: a batch dimension the compiler keeps dynamic is at least 2)
        one_row = self.decode_linears in ("by_batch", "one_row") and T == 1 and B == 1
        fuse = one_row or (self.decode_linears in ("head", "fused", "by_batch") and T == 1 and B <= MAX_ROWS)
        fuse_blocks = one_row or (self.decode_linears == "fused" and fuse)
        from_cache = T == 1 and rows is None and attn.attention.decodes_from_cache
        step = CachedStep(input_pos, rows, attn.cache.slot_index(rows, B), self.kv_len_marker[:kv_len],
                          None if from_cache else attn.attention.prepare(input_pos, kv_len), fuse_blocks,
                          from_cache)
        if step.fused:
            x, pending = x + pending, None
        for block in self.blocks:
            x, pending = run(block, x, pending, step)
        if pending is not None:
            x = x + pending
        if last_index is not None:
            x = x[torch.arange(B, device=x.device), last_index]  # [B, C]
        if fuse:
            return fused_linear(x.reshape(-1, C), self.lm_head, norm=self.ln_f).view(*x.shape[:-1], -1)
        return self.lm_head(self.ln_f(x))

    def forward_reference(self, idx: torch.Tensor) -> torch.Tensor:
        """Eager full-sequence forward without a cache. idx: [B, T] -> logits [B, T, V]."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x, None)
        return self.lm_head(self.ln_f(x))
