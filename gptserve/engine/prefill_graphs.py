"""One-row prefill chunks replayed from CUDA graphs.

An eager prefill of gpt2-large launches ~600 kernels from Python: ~20 ms of the engine thread per call under load
on the H200 (docs/benchmarks.md), during which no decode step can be launched. A replay is one call. Each graph
prefills one prompt chunk of a fixed padded length into one slot, reading a fixed number of cache positions, so
the engine captures one graph per (padded length, KV length) pair at warm-up; a chunk no graph fits runs eagerly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("gptserve")

SHORTEST = 64  # padded lengths are SHORTEST, 2*SHORTEST, ... up to the longest chunk


def padded_lengths(longest_chunk: int, context: int) -> list[int]:
    """The chunk lengths that get graphs: powers of two from SHORTEST, then the longest chunk rounded up to
    SHORTEST (a padded chunk costs at most twice its tokens' compute)."""
    top = min(-(-longest_chunk // SHORTEST) * SHORTEST, context)
    lengths, n = [], SHORTEST
    while n < top:
        lengths.append(n)
        n *= 2
    return lengths + [top]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # [2L + 2] int64 on the device: tokens, positions, slot, index of the last real token
    logits: torch.Tensor  # [1, V], written by every replay


class PrefillGraphs:
    """forward(tokens [1, L], positions [1, L], slots [1], last_index [1], kv_len) -> logits [1, V], captured for
    every padded length and every KV length at least that long. kv_lengths: every length Engine.kv_len_for returns,
    ascending (the last is the context)."""

    def __init__(self, forward: Callable, lengths: list[int], kv_lengths: list[int], device: torch.device):
        self.lengths = lengths
        self.kv_lengths = kv_lengths
        self._graphs: dict[tuple[int, int], _Graph] = {}
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()  # replays never overlap: one pool serves every graph
        for length in lengths:
            for kv_len in kv_lengths:
                if kv_len >= length:
                    self._graphs[length, kv_len] = self._capture(forward, length, kv_len, device, pool)
        torch.cuda.synchronize(device)
        log.info("prefill graphs: %d captured in %.1fs (chunk lengths %s, KV lengths %s)", len(self._graphs),
                 time.perf_counter() - t0, lengths, [k for k in kv_lengths if k >= lengths[0]])

    @staticmethod
    def _capture(forward, length: int, kv_len: int, device, pool) -> _Graph:
        # Slot 0, positions 0..L-1: warm-up writes there, before any request owns a slot.
        host = torch.cat([torch.ones(length, dtype=torch.int64), torch.arange(length), torch.tensor([0, length - 1])])
        inputs = host.to(device)

        def run():
            return forward(inputs[:length].view(1, length), inputs[length: 2 * length].view(1, length),
                           inputs[2 * length: 2 * length + 1], inputs[2 * length + 1:], kv_len)

        side = torch.cuda.Stream(device)  # warm up lazily initialised kernels (cuBLAS, SDPA) outside the capture
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = run()
        return _Graph(graph, inputs, logits)

    def prefill(self, prompt, slot: int, start: int) -> torch.Tensor | None:
        """Logits [1, V] of the chunk's last token after writing its KV at positions start.. of `slot`; None
        when no captured graph fits (the caller prefills eagerly)."""
        length = next((n for n in self.lengths if n >= len(prompt)), None)
        if length is None or start + length > self.kv_lengths[-1]:  # past the cache's end
            return None
        kv_len = next(k for k in self.kv_lengths if k >= start + length)  # Engine.kv_len_for of the last position
        entry = self._graphs[length, kv_len]  # captured: kv_len >= length
        host = torch.zeros(2 * length + 2, dtype=torch.int64)
        host[: len(prompt)] = torch.tensor(prompt)
        host[length: 2 * length] = torch.arange(start, start + length)
        host[2 * length:] = torch.tensor([slot, len(prompt) - 1])
        entry.inputs.copy_(host.pin_memory(), non_blocking=True)  # queued behind the work already launched
        entry.graph.replay()
        return entry.logits.clone()  # the next replay of this graph overwrites entry.logits
