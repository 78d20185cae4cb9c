"""GPT-2 decoder (nanoGPT shape) with a static, slot-addressed KV cache.

Shapes: B rows, T tokens per row, H heads, D head dim, S cache positions, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_reference, get_attention
from .config import ModelConfig
from .decode_attention import decode_attention
from .kv_cache import KVCache


@dataclass
class CachedStep:
    """What every layer of one cached forward shares, computed once: where to write (slot_index, input_pos
    [B, T]), what to read (rows, the first kv_len positions) and the attention backend's mask."""

    input_pos: torch.Tensor
    rows: object  # slice or index tensor
    slot_index: torch.Tensor
    kv_len: int
    mask: object


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.cache: KVCache | None = None
        self.attention = get_attention("sdpa")

    def forward(self, x: torch.Tensor, step: CachedStep | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # 3x [B, H, T, D]
        if step is None:  # reference path: the whole sequence, no cache
            y = causal_reference(q, k, v)
        elif T == 1 and isinstance(step.rows, slice) and self.attention.decodes_from_cache:  # decode, rows 0..B-1
            self.cache.write(step.slot_index, step.input_pos, k, v)
            y = decode_attention(q[:, :, 0], self.cache.k, self.cache.v, step.input_pos[:, 0])[:, :, None]
        else:
            k_all, v_all = self.cache.update(step.rows, step.slot_index, step.input_pos, k, v, step.kv_len)
            y = self.attention.attend(q, k_all, v_all, step.mask)  # k_all, v_all: [B, H, kv_len, D]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


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
        x = x + self.attn(self.ln_1(x), step)
        return x + self.mlp(self.ln_2(x))


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

    def setup_cache(self, slots: int, length: int, dtype, attention_backend: str):
        device = self.wte.weight.device
        attention = get_attention(attention_backend)
        for block in self.blocks:
            block.attn.cache = KVCache(slots, self.cfg.n_head, length, self.cfg.head_dim, dtype, device)
            block.attn.attention = attention

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor, rows, last_index: torch.Tensor | None = None,
                kv_len=None):
        """Cached forward. idx, input_pos: [B, T]; rows: slots of the B rows (slice or index tensor); kv_len:
        cache positions attention reads (every input_pos must be below it; None: all).

        Returns logits [B, V] at last_index [B] when given, else [B, T, V].
        """
        x = self.wte(idx) + self.wpe(input_pos)  # [B, T, C]
        attn = self.blocks[0].attn
        kv_len = attn.cache.length if kv_len is None else kv_len
        step = CachedStep(input_pos, rows, attn.cache.slot_index(rows), kv_len,
                          attn.attention.prepare(input_pos, kv_len))
        for block in self.blocks:
            x = block(x, step)
        if last_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last_index]  # [B, C]
        return self.lm_head(self.ln_f(x))

    def forward_reference(self, idx: torch.Tensor) -> torch.Tensor:
        """Eager full-sequence forward without a cache. idx: [B, T] -> logits [B, T, V]."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x, None)
        return self.lm_head(self.ln_f(x))
