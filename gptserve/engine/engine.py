"""The engine: prefill, decode_step, sample and generate over a slot-addressed static KV cache.

Slot i of the cache belongs to batch row i. A decode step over bucket B runs rows (slots) 0..B-1, so the
caches it touches are views, and each (bucket, KV length) is one CUDA graph (each bucket, with split-KV
attention). The cache has a row for every row of the largest bucket in use (16 for 12 slots): rows past the
slots are computed, never read.
The engine knows tokens, never requests: which tokens end a sequence is the serving layer's business.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import checkpoint
from .build import INIT_STD, Resolved, build, resolve
from .config import BATCH_BUCKETS
from .graphs import DecodeGraphs, PrefillGraphs, padded_lengths
from .model import mark_dynamic, run_block
from .sampling import SamplingParams, sample
from .tokenizer import load_tokenizer
from .transfer import HostStaging, to_device

log = logging.getLogger("gptserve")

# compile_mode -> inductor's mode: the engine records CUDA graphs itself (graphs.py), for these modes on a GPU
INDUCTOR_MODES = {"reduce-overhead": "default", "default": "default", "max-autotune": "max-autotune-no-cudagraphs"}
GRAPHED_MODES = ("reduce-overhead", "max-autotune")

PREFILL_ALIGN = 64  # prompts are padded to a multiple of this: few distinct prefill shapes
KV_BLOCK = 256  # attention reads the cache up to the batch's furthest position, rounded up to this many


def bucket_for(rows: int) -> int:
    for b in BATCH_BUCKETS:
        if rows <= b:
            return b
    raise ValueError(f"{rows} rows exceed the largest batch bucket {BATCH_BUCKETS[-1]}")


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens (GenerationRequest carries the same fields)."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    min_length: int = 0  # end_id is not sampled before this many outputs
    end_id: int = -1


GREEDY = Sampling()


@dataclass
class Generation:
    tokens: list[list[int]]  # per prompt, every token generated (no end-of-sequence rule applied)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # [n, V] per step, when recorded


class Engine:
    def __init__(self, settings, device: str | None = None, embedding_std: float = INIT_STD):
        """settings: a gptserve.settings.ServingConfig; device overrides settings.device; embedding_std: of seeded
        embeddings, when there is no checkpoint (build())."""
        t0 = time.perf_counter()
        self.settings = settings
        self.resolved: Resolved = resolve(settings, device)
        r = self.resolved
        self.cfg, self.device, self.dtype = r.model, r.device, r.dtype
        self.slots = settings.max_batch_size
        self.context = settings.max_seq_len or r.model.n_ctx  # KV-cache positions per slot
        if self.context > r.model.n_ctx:
            raise ValueError(f"parameter max_seq_len={self.context} exceeds the model's context of {r.model.n_ctx}")
        self.embedding_std = embedding_std
        self.model = build(r, settings.weights_seed, settings.model_path, embedding_std=embedding_std)
        # One spare position: reading the whole context is then still a strict part of the cache, which the
        # compiler handles with the other lengths (a full-length, contiguous view would be compiled apart).
        self.model.setup_cache(bucket_for(self.slots), self.context + 1, r.kv_cache_dtype,
                               r.attention_backend, r.decode_linears)
        self.tokenizer = load_tokenizer(settings.tokenizer_path, settings.model_path, r.model.vocab_size)
        self.end_id = self._default_end_id()
        if self.tokenizer.vocab_size < r.model.vocab_size:
            log.warning("tokenizer %s covers ids 0..%d of the model's %d; text_output shows every other id as "
                        "U+FFFD", self.tokenizer.name, self.tokenizer.vocab_size - 1, r.model.vocab_size)
        # A decode step: decode_step() replays its CUDA graph (_decode_graphs) where one was captured, else runs
        # _decode_step(): _decode, which is _forward_decode, compiled whole (compile_region=step) or calling
        # _run_block, compiled (block) for each layer. DecodeGraphs captures _capture_decode.
        self._decode = self._forward_decode
        self._run_block = run_block
        # CUDA graphs, captured by warmup(): decode where compile_mode is reduce-overhead or max-autotune on a GPU
        # (not with Transformer Engine: its layers keep state on the host), prefill where graphs_for_prefill
        self._decode_graphs: DecodeGraphs | None = None
        self._prefill_graphs: PrefillGraphs | None = None
        self._staging = HostStaging(self.device)
        if r.compile_mode != "none":
            self._compile(r.compile_mode, settings.compile_cache_dir)
        self.build_seconds = time.perf_counter() - t0
        log.info(
            "engine: preset=%s params=%.0fM device=%s dtype=%s compile=%s/%s attention=%s decode_linears=%s fp8=%s "
            "kv=%s end_id=%d (%.1fs)", r.preset, r.model.num_params() / 1e6, r.device, r.dtype, r.compile_mode,
            settings.compile_region, r.attention_backend, r.decode_linears, r.fp8_mode,
            r.kv_cache_dtype, self.end_id, self.build_seconds,
        )

    def _default_end_id(self) -> int:
        """The checkpoint's eos_token_id, else the tokenizer's end token, else the last id (GPT-2's 50256).
        An id outside the vocabulary can never be sampled: no end id."""
        chosen = checkpoint.end_id(self.settings.model_path) if self.settings.model_path else checkpoint.NOT_SET
        if chosen is checkpoint.NOT_SET:
            chosen = self.tokenizer.end_id if self.tokenizer.end_id is not None else self.cfg.end_id
        if chosen >= self.cfg.vocab_size:
            log.warning("end id %d is outside the vocabulary of %d: sequences end only at max_tokens or a stop word",
                        chosen, self.cfg.vocab_size)
            return -1
        return chosen

    # -- compiled hot functions -------------------------------------------------------------------------------
    def _compile(self, mode: str, cache_dir: str):
        # Only decode is compiled: it is shape-stable and launch-bound. compile_region=block compiles one block,
        # which every layer then reuses (one compile instead of n_layer inlined copies: a fast start);
        # compile_region=step compiles the whole step (fusions across blocks). Either way the batch dimension is
        # dynamic (one graph for buckets 2..64, one for batch 1), and the engine captures the whole step in CUDA
        # graphs itself (graphs.py), as inductor's CUDA-graph trees would capture each block apart. Prefill stays
        # eager: compiling it with dynamic shapes kept gpt2-large from READY for over 5 minutes on the H200
        # (docs/benchmarks.md, run 4), although its eager Python is the engine thread's largest cost under load.
        # Every Engine in a process (benchmarks, tests) compiles the same code objects, so dynamo's per-code
        # recompile limit must cover them all.
        if cache_dir:  # inductor reads this whenever it needs its cache: kernels and graphs survive restarts
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
            # and Triton's, for the engine's own kernels (rows_linear, split-KV): a TRITON_CACHE_DIR already set
            # (the Docker image's, the manifests') wins
            os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_dir, "triton"))
        torch._inductor.config.fx_graph_cache = True
        # kernel_tuning=coordinate-descent: inductor times launch configurations of each generated kernel (gpt-fast's
        # setting). Off by default: its choices are not all found in the compile cache, so every start retuned some
        # kernels, and decode was no faster without it (runs 48-50).
        torch._inductor.config.coordinate_descent_tuning = (self.device.type == "cuda"
                                                            and self.settings.kernel_tuning == "coordinate-descent")
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 1024)
        inductor_mode = INDUCTOR_MODES[mode]
        if self.settings.compile_region == "block":
            compiled = torch.compile(run_block, mode=inductor_mode, fullgraph=True)

            def run_compiled(block, x, pending, step):
                step.mark_dynamic(x, pending)  # before the call: dynamo does not trace marking
                return compiled(block, x, pending, step)

            self._run_block = run_compiled
        else:
            self._decode = torch.compile(self._forward_decode, mode=inductor_mode, fullgraph=True)
        if mode in GRAPHED_MODES and self.device.type == "cuda" and self.resolved.fp8_mode != "transformer-engine":
            self._decode_graphs = DecodeGraphs(self._capture_decode, self.device,
                                               per_kv_length=not self.model.decodes_from_cache)

    def _forward_decode(self, tokens, positions, kv_len_marker):
        # tokens, positions: [B, 1] for slots 0..B-1; kv_len_marker: [kv_len] -> logits [B, V]
        return self.model(tokens, positions, None, kv_len=kv_len_marker.shape[0], run=self._run_block)[:, -1]

    def _capture_decode(self, tokens, positions, kv_len: int):
        return self._decode_step(tokens, positions, self.model.kv_len_marker[:kv_len])  # captured by DecodeGraphs

    @property
    def graphs_for_prefill(self) -> bool:
        """Whether warmup() captures one-prompt prefill graphs: only beside a CUDA-graph decode step (the same
        conditions of capture), and with sdpa or splitkv attention (flex runs compiled with dynamic shapes)."""
        return (self.settings.prefill_graphs == "auto" and self._decode_graphs is not None
                and self.resolved.attention_backend != "flex")

    @property
    def decode_graph_count(self) -> int:
        """Decode steps captured as CUDA graphs once warmed up, else 0: one per (batch bucket, KV length), or one
        per bucket where the step reads each row up to its own position (split-KV decode attention)."""
        return len(self._decode_graphs) if self._decode_graphs is not None else 0

    @property
    def prefill_graphed(self) -> bool:
        """True once one-prompt prefill replays CUDA graphs: then one prompt per prefill() call is cheapest."""
        return self._prefill_graphs is not None

    def kv_len_for(self, max_position: int) -> int:
        """Cache positions attention reads when no row is past max_position: the next KV_BLOCK multiple."""
        return min(self.context, -(-(max_position + 1) // KV_BLOCK) * KV_BLOCK)

    def kv_lengths(self) -> list[int]:
        """Every length kv_len_for returns: the decode shapes of one batch bucket."""
        return sorted({self.kv_len_for(p) for p in range(0, self.context, KV_BLOCK)})

    # -- the three verbs --------------------------------------------------------------------------------------
    def prefill(self, prompts: list[tuple[int, ...]], slots: list[int], start: list[int] | None = None):
        """Write the prompts' KV into `slots` (at positions from `start`, default 0); logits [N, V] of each
        prompt's last token. Prompts are right-padded: padding lands past each prompt and is overwritten later."""
        start = start or [0] * len(prompts)
        if len(prompts) == 1 and self._prefill_graphs is not None:
            with torch.no_grad():
                logits = self._prefill_graphs.prefill(prompts[0], slots[0], start[0])
            if logits is not None:
                return logits
        length = max(len(p) for p in prompts)
        padded = min(-(-length // PREFILL_ALIGN) * PREFILL_ALIGN, self.context - max(start))
        tokens = torch.zeros(len(prompts), padded, dtype=torch.int64)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        positions = (torch.tensor(start)[:, None] + torch.arange(padded)[None, :]).clamp(max=self.context - 1)
        last = torch.tensor([len(p) - 1 for p in prompts])
        with torch.no_grad():
            return self.model(self.to_device(tokens), self.to_device(positions), self.to_device(torch.tensor(slots)),
                              self.to_device(last), self.kv_len_for(int(positions.max())))

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, max_position: int | None = None):
        """One token for each of slots 0..B-1. tokens, positions: [B] on device -> logits [B, V].
        max_position (host int, default the last cache position) bounds positions: attention reads only the
        cache up to it (kv_len_for)."""
        tokens, positions = tokens[:, None], positions[:, None]  # [B, 1]
        kv_len = self.kv_len_for(self.context - 1 if max_position is None else max_position)
        with torch.no_grad():
            logits = self._decode_graphs.replay(tokens, positions, kv_len) if self._decode_graphs else None
            return self._decode_step(tokens, positions, self.model.kv_len_marker[:kv_len]) if logits is None else logits

    def _decode_step(self, tokens, positions, kv_len_marker):
        """The step without CUDA graphs. tokens, positions: [B, 1]; kv_len_marker: [kv_len] -> logits [B, V]."""
        if self.resolved.compile_mode != "none" and self.settings.compile_region == "step":
            mark_dynamic(kv_len_marker, tokens, positions)
        return self._decode(tokens, positions, kv_len_marker)

    sample = staticmethod(sample)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        return to_device(host, self.device)

    def stage(self, rows: list[list[int]]) -> torch.Tensor:
        """Small int64 rows on the device, through a reused pinned buffer (cheaper than pinning anew)."""
        return self._staging.put(rows)

    # -- a batch generated together (dynamic batching) --------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[tuple[int, ...]], sampling: list, max_new_tokens: int,
                 on_tokens: Callable[[list[list[int]]], bool] | None = None,
                 record_logits: bool = False) -> Generation:
        """Up to `slots` prompts in slots 0..n-1, each sampled by its row of `sampling` (Sampling-like objects),
        for max_new_tokens steps. on_tokens(new) receives, every sync_every steps, each prompt's tokens made since
        its last call, and stops the generation early by returning True (every sequence has ended)."""
        n = len(prompts)
        assert n <= self.slots, f"{n} prompts for {self.slots} slots"
        rows = bucket_for(n)
        params = SamplingParams.build(sampling, rows, self.device)
        lengths = [len(p) for p in prompts] + [0] * (rows - n)
        positions = self.to_device(torch.tensor(lengths))
        out = torch.zeros(rows, max_new_tokens, dtype=torch.int64, device=self.device)
        recorded: list[torch.Tensor] = []
        logits = self.prefill(prompts, list(range(n)))  # [n, V]
        if rows > n:
            logits = torch.cat([logits, logits.new_zeros(rows - n, logits.shape[1])])
        step = torch.zeros(rows, dtype=torch.int64, device=self.device)
        reported = made = 0
        for i in range(max_new_tokens):
            if record_logits:
                recorded.append(logits[:n].float().cpu())
            token = self.sample(logits, params, step)
            out[:, i] = token
            made = i + 1
            if made == max_new_tokens:
                break
            if on_tokens is not None and made % self.settings.sync_every == 0:
                stop = on_tokens(out[:n, reported:made].tolist())
                reported = made
                if stop:
                    break
            step += 1
            # rows past their own budget keep going (never past the last cache position): nobody reads them
            logits = self.decode_step(token, (positions + i).clamp(max=self.context - 1),
                                      min(max(lengths) + i, self.context - 1))
        tokens = out[:n, :made].tolist()
        if on_tokens is not None and made > reported:
            on_tokens([row[reported:] for row in tokens])
        return Generation(tokens, recorded)

    # -- start-up ------------------------------------------------------------------------------------------
    def warmup(self, prompt_len: int | None = None) -> dict[int, float]:
        """Run every batch bucket once (compiles it, and captures its graphs: one per KV length, or one with
        split-KV attention); seconds per bucket."""
        prompt_len = min(prompt_len or self.settings.warmup_prompt_len, self.context - 2)
        seconds = {}
        for b in BATCH_BUCKETS:
            if b > bucket_for(self.slots):
                break
            t0 = time.perf_counter()
            n = min(b, self.slots)  # n prompts run bucket b
            self.generate([(1,) * prompt_len] * n, [GREEDY] * n, 2)  # the compiler's first call at b
            if self._decode_graphs is not None:
                with torch.no_grad():
                    self._decode_graphs.capture(b, self.kv_lengths())
            self.synchronize()
            seconds[b] = time.perf_counter() - t0
        if self._decode_graphs is not None:
            self._decode_graphs.warmed_up()
        if self.graphs_for_prefill and self._prefill_graphs is None:
            with torch.no_grad():
                self._prefill_graphs = PrefillGraphs(
                    self.model, padded_lengths(self.settings.prefill_chunk, self.context), self.kv_lengths(),
                    self.device)
        log.info("warmup: seconds per bucket %s; %d decode graphs", {k: round(v, 2) for k, v in seconds.items()},
                 self.decode_graph_count)
        return seconds

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def probe_max_abs_diff(self, reference=None, new_tokens: int = 8) -> float:
        """Largest |logit| difference between the optimized path and the eager fp32 reference path, over a
        ragged greedy probe batch (as many of its four prompts as the slots take). `reference` is a GPT in fp32 with
        the same weights (built when None)."""
        from .reference import reference_logits, reference_model

        lengths = (5, 17, 9, 30)[: self.slots]
        prompts = [tuple((7 * i + 3 * j) % 256 for j in range(n)) for i, n in enumerate(lengths)]
        generation = self.generate(prompts, [GREEDY] * len(prompts), new_tokens, record_logits=True)
        reference = reference or reference_model(self)
        diff = 0.0
        for row, (prompt, tokens) in enumerate(zip(prompts, generation.tokens)):
            ref = reference_logits(reference, list(prompt) + tokens[:-1])[len(prompt) - 1:]
            opt = torch.stack([step[row] for step in generation.step_logits])
            diff = max(diff, (opt - ref).abs().max().item())
        return diff
