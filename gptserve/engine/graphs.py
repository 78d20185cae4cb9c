"""Engine calls replayed from CUDA graphs: decode steps (DecodeGraphs) and one-row prefill chunks (PrefillGraphs).

A replay is one call: no Python, no compiler guards, no kernel launches from the host. Graphs of one kind share
one memory pool: replays never overlap (one engine thread, one stream). A graph's output may lie where another
graph of the pool keeps its intermediates: it is valid until the next replay of any of them.

Decode: the compiler compiles one block (or the whole step) without CUDA graphs, and the engine captures the whole
step, one graph per (batch bucket, KV length), at warm-up; with split-KV attention one per batch bucket.

Prefill: an eager prefill of gpt2-large launches ~600 kernels from Python: ~20 ms of the engine thread per call
under load on the H200 (docs/benchmarks.md), during which no decode step can be launched. Each graph prefills one
prompt chunk of a fixed padded length into one slot, reading a fixed number of cache positions, so
the engine captures one graph per (padded length, KV length) pair at warm-up. A longer prompt replays a graph per
chunk (the static model's prompts may pass the in-flight model's chunk); one whose padding would pass the cache's
end runs eagerly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("gptserve")

WARM_RUNS = 1  # eager runs before each capture: one sets up what the step's kernels initialise lazily
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
    inputs: tuple[torch.Tensor, ...]  # int64 on the device, read by every replay
    logits: torch.Tensor  # written by every replay


def capture(run: Callable[[], torch.Tensor], device: torch.device, pool,
            warm_runs: int = WARM_RUNS) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A CUDA graph of run() in memory pool `pool`, and the output it writes on every replay."""
    if warm_runs:  # initialise lazily set-up kernels (cuBLAS, SDPA's plan for this shape) outside the capture
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warm_runs):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    return graph, out


class DecodeGraphs:
    """decode(tokens [B, 1], positions [B, 1], kv_len) -> logits [B, V] for slots 0..B-1, replayed from the graph
    captured for (B, kv_len), or for B alone when per_kv_length is False. The logits stay valid until the next
    decode step (use them, or clone them)."""

    def __init__(self, decode: Callable, device: torch.device, per_kv_length: bool = True):
        """per_kv_length False: the step's kernels do not depend on the KV length (split-KV decode attention reads
        each row up to its own position, on the device), so one graph per batch bucket serves every length."""
        self._decode = decode
        self._device = device
        self.per_kv_length = per_kv_length
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[int, int | None], _Graph] = {}
        self._warmed_up = False  # set by warmed_up(): every shape warm-up will capture is captured
        self._missed = False  # a step without a graph after warm-up: logged once

    def __len__(self) -> int:
        return len(self._graphs)

    def capture(self, rows: int, kv_lengths: list[int]):
        """The graphs of a step over slots 0..rows-1, one per KV length (ascending), or one reading the longest
        when the step does not depend on it. Capture runs the step: it writes at position 0 of those slots, which
        a prefill overwrites before any request reads it."""
        # tokens and positions, read by every replay, each in its own allocation: as views of one [2, 1, 1]
        # tensor, batch 1's positions began 8 bytes in, which a block compiled on aligned inputs copies to an
        # aligned buffer at every call (inductor's copy_misaligned_inputs): the 36 copies a gpt2-large batch-1
        # step of runs 80-95, gone with this (1.328 -> 1.280 ms, run 96 in docs/benchmarks.md)
        inputs = tuple(torch.zeros(rows, 1, dtype=torch.int64, device=self._device) for _ in range(2))
        for kv_len in kv_lengths if self.per_kv_length else kv_lengths[-1:]:
            graph, logits = capture(lambda: self._decode(*inputs, kv_len), self._device, self._pool)
            self._graphs[self._key(rows, kv_len)] = _Graph(graph, inputs, logits)

    def _key(self, rows: int, kv_len: int) -> tuple[int, int | None]:
        return rows, (kv_len if self.per_kv_length else None)

    def warmed_up(self):
        """Warm-up has captured every shape: a step without a graph from now on is worth a warning."""
        self._warmed_up = True

    def replay(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor | None:
        """Logits [B, V] of the step, or None when no graph was captured for this shape."""
        entry = self._graphs.get(self._key(tokens.shape[0], kv_len))
        if entry is None:
            if self._warmed_up and not self._missed:
                log.warning("decode step of %d rows reading %d positions has no CUDA graph: running it without",
                            tokens.shape[0], kv_len)
                self._missed = True
            return None
        for static, new in zip(entry.inputs, (tokens, positions)):
            static.copy_(new)
        entry.graph.replay()
        return entry.logits


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
        # inputs: [2L + 2]: tokens, positions, slot, index of the last real token
        host = torch.cat([torch.ones(length, dtype=torch.int64), torch.arange(length), torch.tensor([0, length - 1])])
        inputs = host.to(device)

        def run():
            return forward(inputs[:length].view(1, length), inputs[length: 2 * length].view(1, length),
                           inputs[2 * length: 2 * length + 1], inputs[2 * length + 1:], kv_len)

        graph, logits = capture(run, device, pool)
        return _Graph(graph, (inputs,), logits)

    def prefill(self, prompt, slot: int, start: int) -> torch.Tensor | None:
        """Logits [1, V] of the prompt's last token after writing its KV at positions start.. of `slot`, one replay
        per chunk of the longest captured length; None when the last chunk's padding would pass the cache's end
        (the caller prefills eagerly)."""
        longest = self.lengths[-1]
        last = (len(prompt) - 1) // longest * longest  # where the last chunk starts
        tail = next(n for n in self.lengths if n >= len(prompt) - last)
        if start + last + tail > self.kv_lengths[-1]:
            return None
        for offset in range(0, len(prompt), longest):
            logits = self._replay(prompt[offset: offset + longest], slot, start + offset)
        return logits.clone()  # the next replay of this graph overwrites its logits

    def _replay(self, chunk, slot: int, start: int) -> torch.Tensor:
        length = next(n for n in self.lengths if n >= len(chunk))
        kv_len = next(k for k in self.kv_lengths if k >= start + length)  # Engine.kv_len_for of the last position
        entry = self._graphs[length, kv_len]  # captured: kv_len >= length
        host = torch.zeros(2 * length + 2, dtype=torch.int64)
        host[: len(chunk)] = torch.tensor(chunk)
        host[length: 2 * length] = torch.arange(start, start + length)
        host[2 * length:] = torch.tensor([slot, len(chunk) - 1])
        entry.inputs[0].copy_(host.pin_memory(), non_blocking=True)  # queued behind the work already launched
        entry.graph.replay()
        return entry.logits
