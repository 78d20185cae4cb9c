"""Attention over a slot's KV cache: query t of row b sees cache positions <= input_pos[b, t].

Prompts are right-padded and every token sits at its absolute position in its slot, so one rule serves
ragged prefill, chunked prefill and decode alike.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flex", "splitkv")
FLEX_BLOCK = 128


class Sdpa:
    """PyTorch's scaled_dot_product_attention with a boolean mask of the visible cache positions."""

    decodes_from_cache = False  # see SplitKV

    @staticmethod
    def prepare(input_pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """The mask every layer of one forward shares: [B, 1, T, kv_len] (input_pos: [B, T])."""
        return torch.arange(kv_len, device=input_pos.device) <= input_pos[:, None, :, None]

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        # q: [B, H, T, D]; k, v: [B, H, S, D]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


def flex_block_mask(input_pos: torch.Tensor, kv_len: int):
    """Block mask whose KV blocks stop at each query block's last position: skipped blocks are never read.

    Built from tensors alone (no host sync), so a captured decode graph can rebuild it every step.
    """
    from torch.nn.attention.flex_attention import BlockMask

    batch, q_len = input_pos.shape
    q_blocks = -(-q_len // FLEX_BLOCK)
    kv_blocks = -(-kv_len // FLEX_BLOCK)
    padded = F.pad(input_pos, (0, q_blocks * FLEX_BLOCK - q_len), value=-1)
    last_pos = padded.view(batch, q_blocks, FLEX_BLOCK).amax(-1)  # [B, q_blocks]
    kv_num_blocks = (last_pos // FLEX_BLOCK + 1).clamp(max=kv_blocks).to(torch.int32)[:, None, :]
    kv_indices = torch.arange(kv_blocks, device=input_pos.device, dtype=torch.int32)
    kv_indices = kv_indices.expand(batch, 1, q_blocks, kv_blocks).contiguous()

    def visible(b, h, q_idx, kv_idx):
        return kv_idx <= input_pos[b, q_idx]

    return BlockMask.from_kv_blocks(
        kv_num_blocks, kv_indices, BLOCK_SIZE=FLEX_BLOCK, mask_mod=visible, seq_lengths=(q_len, kv_len)
    )


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


class SplitKV(Sdpa):
    """Sdpa, except that a decode step (one token per row, rows 0..B-1) attends straight over the cache with
    split-KV attention (decode_attention.py): every SM busy at batch 1, an FP8 cache read as it is."""

    decodes_from_cache = True


class Flex:
    """FlexAttention with a block mask that skips the cache blocks past each query block."""

    decodes_from_cache = False

    prepare = staticmethod(flex_block_mask)

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        # Eager flex_attention materialises every score (a 1024-token prefill took 334 ms on the H100): on a GPU
        # it always runs compiled, also inside the eager prefill. Inductor has no CPU lowering for this use.
        attend = _compiled_flex_attention() if q.is_cuda else flex_attention
        return attend(q, k, v, block_mask=block_mask)


def causal_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention without a cache: the eager reference path."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def get_attention(backend: str):
    """The backend's prepare(input_pos, kv_len) -> per-forward state and attend(q, k, v, state)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend {backend!r} is not one of {list(BACKENDS)}")
    return {"sdpa": Sdpa, "flex": Flex, "splitkv": SplitKV}[backend]
