"""Next-token choice: greedy, or temperature / top-k / top-p sampling with per-request seeds.

Randomness comes from a counter-based hash of (seed, step, token id): the same seed gives the same tokens
whatever else shares the batch, on any device, without per-row generator state or host syncs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .transfer import to_device

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform (0, 1) noise [B, V] from seed [B] (int64, 64-bit seeds folded to 32) and step [B] (int64)."""
    key = _mix32(_mix32((seed & _MASK32) ^ _mix32((seed >> 32) & _MASK32)) ^ (step & _MASK32))  # [B]
    token = torch.arange(vocab_size, device=seed.device, dtype=torch.int64)
    bits = _mix32((key[:, None] + token * 0x9E3779B9) & _MASK32)  # [B, V]
    return (bits.double() + 0.5) / 2.0**32


@dataclass
class SamplingParams:
    """Per-row sampling settings as device tensors, plus host flags that pick the cheap path."""

    temperature: torch.Tensor  # [B] float32, 0 = greedy
    top_k: torch.Tensor  # [B] int64, 0 = off
    top_p: torch.Tensor  # [B] float32
    seed: torch.Tensor  # [B] int64
    min_tokens: torch.Tensor  # [B] int64: the end id is not sampled before output index min_tokens
    end_id: torch.Tensor  # [B] int64, -1 = none
    all_greedy: bool
    needs_sort: bool
    holds_end: bool  # some row has min_tokens > 0

    @classmethod
    def build(cls, rows_settings, rows: int, device) -> "SamplingParams":
        """From objects with temperature, top_k, top_p, seed, min_length and end_id (GenerationRequests); rows
        past len(rows_settings) are padding and sample greedily."""
        pad = rows - len(rows_settings)
        sampled = [r for r in rows_settings if r.temperature > 0]

        def column(values, fill, dtype):
            return to_device(torch.tensor(list(values) + [fill] * pad, dtype=dtype), torch.device(device))

        return cls(
            temperature=column((r.temperature for r in rows_settings), 0.0, torch.float32),
            top_k=column((r.top_k for r in rows_settings), 0, torch.int64),
            top_p=column((r.top_p for r in rows_settings), 1.0, torch.float32),
            seed=column((r.seed - 2**64 if r.seed >= 2**63 else r.seed for r in rows_settings), 0, torch.int64),
            min_tokens=column((r.min_length for r in rows_settings), 0, torch.int64),
            end_id=column((r.end_id for r in rows_settings), -1, torch.int64),
            all_greedy=not sampled,
            needs_sort=any(r.top_k > 0 or r.top_p < 1.0 for r in sampled),
            holds_end=any(r.min_length > 0 and r.end_id >= 0 for r in rows_settings),
        )


def sample(logits: torch.Tensor, params: SamplingParams, step: torch.Tensor) -> torch.Tensor:
    """Next tokens [B] (int64) from logits [B, V]; `step` [B] is each row's output index (the RNG counter)."""
    if params.holds_end:
        logits = _hold_end(logits, params, step)
    greedy = logits.argmax(dim=-1)
    if params.all_greedy:
        return greedy
    logits = logits.float() / params.temperature.clamp(min=1e-6)[:, None]
    if params.needs_sort:
        logits = _filter_top_k_top_p(logits, params.top_k, params.top_p)
    # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws token i with probability p_i.
    race = torch.softmax(logits, dim=-1).double() / -torch.log(uniform_noise(params.seed, step, logits.shape[-1]))
    return torch.where(params.temperature > 0, race.argmax(dim=-1), greedy)


def _hold_end(logits: torch.Tensor, params: SamplingParams, step: torch.Tensor) -> torch.Tensor:
    """Rows before their min_tokens-th output can not draw their end id."""
    held = (step < params.min_tokens) & (params.end_id >= 0)  # [B]
    column = params.end_id.clamp(min=0)[:, None]  # [B, 1]
    floor = torch.full_like(column, float("-inf"), dtype=logits.dtype)
    return logits.scatter(1, column, torch.where(held[:, None], floor, logits.gather(1, column)))


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    rank = torch.arange(logits.shape[-1], device=logits.device)
    k = torch.where(top_k > 0, top_k, logits.shape[-1])
    drop = rank[None, :] >= k[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
    drop |= before > top_p[:, None]  # the best token always stays (before == 0)
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
