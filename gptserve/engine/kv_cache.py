"""The static KV cache: one slot per sequence, every token at its absolute position in its slot."""
from __future__ import annotations

import torch
import torch.nn as nn


class KVCache(nn.Module):
    """Keys and values for `slots` sequences, each at absolute positions 0..S-1 of its own slot."""

    def __init__(self, slots: int, n_head: int, n_ctx: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (slots, n_head, n_ctx, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def slot_index(self, rows, batch: int) -> torch.Tensor:
        """[B, 1] slot numbers of the rows (a slice, an index tensor, or None: slots 0..batch-1), for update();
        one per forward."""
        return torch.arange(self.k.shape[0], device=self.k.device)[_rows(rows, batch)][:, None]

    def write(self, slot_index: torch.Tensor, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, H, T, D] at input_pos [B, T] of slots slot_index [B, 1]."""
        write_cache(self.k, self.v, slot_index, input_pos, k, v)

    def update(self, rows, slot_index: torch.Tensor, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kv_len: int):
        """write(); return the rows' caches [B, H, kv_len, D] in k's dtype: attention reads only their first
        kv_len positions."""
        self.write(slot_index, input_pos, k, v)
        rows = _rows(rows, k.shape[0])
        return self.k[rows, :, :kv_len].to(k.dtype), self.v[rows, :, :kv_len].to(v.dtype)


def write_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, slot_index: torch.Tensor, input_pos: torch.Tensor,
                k: torch.Tensor, v: torch.Tensor):
    """Write k, v [B, H, T, D] into caches [slots, H, S, D] at input_pos [B, T] of slots slot_index [B, 1]."""
    k_cache[slot_index, :, input_pos] = k.transpose(1, 2).to(k_cache.dtype)  # indexed view: [B, T, H, D]
    v_cache[slot_index, :, input_pos] = v.transpose(1, 2).to(v_cache.dtype)


def _rows(rows, batch: int):
    return slice(0, batch) if rows is None else rows
