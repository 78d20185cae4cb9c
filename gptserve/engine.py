"""The engine: prefill, decode_step, sample and generate over a slot-addressed static KV cache.

Slot i of the cache belongs to batch row i. A decode step over bucket B runs rows (slots) 0..B-1, so the
caches it touches are views, and each bucket is one shape for the compiler and one CUDA graph.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from .build import Resolved, build_model, resolve
from .config import BATCH_BUCKETS, ServingConfig
from .requests import GenerationRequest, Limits
from .sampling import SamplingParams, sample
from .tokenizer import load_tokenizer

log = logging.getLogger("gptserve")

PREFILL_ALIGN = 64  # prompts are padded to a multiple of this: few distinct prefill shapes
KV_BLOCK = 256  # attention reads the cache up to the batch's furthest position, rounded up to this many


def bucket_for(rows: int) -> int:
    for b in BATCH_BUCKETS:
        if rows <= b:
            return b
    raise ValueError(f"{rows} rows exceed the largest batch bucket {BATCH_BUCKETS[-1]}")


@dataclass
class GenerationResult:
    output_ids: list[int]
    text: str
    num_input_tokens: int
    finish_reason: str  # "length", "end_id" or "stop_word"
    step_logits: list[torch.Tensor] = field(default_factory=list)  # only when asked for (probes, tests)


class Engine:
    def __init__(self, serving: ServingConfig, device: str | None = None):
        t0 = time.perf_counter()
        self.serving = serving
        self.resolved: Resolved = resolve(serving, device)
        r = self.resolved
        self.cfg, self.device, self.dtype = r.model, r.device, r.dtype
        self.slots = serving.max_batch_size
        convert = None
        if r.fp8_mode != "none":
            from .fp8 import block_converter

            convert = block_converter(r.fp8_mode)
        self.model = build_model(r.model, r.device, r.dtype, serving.weights_seed, serving.model_path, convert)
        if convert is not None:
            from .fp8 import convert_lm_head

            convert_lm_head(self.model, r.fp8_mode)
        self.context = serving.max_seq_len or r.model.n_ctx  # KV-cache positions per slot
        if self.context > r.model.n_ctx:
            raise ValueError(f"parameter max_seq_len={self.context} exceeds the model's context of {r.model.n_ctx}")
        # One spare position: reading the whole context is then still a strict part of the cache, which the
        # compiler handles with the other lengths (a full-length, contiguous view would be compiled apart).
        self.model.setup_cache(self.slots, self.context + 1, r.kv_cache_dtype, serving.attention_backend)
        # Its first kv_len entries carry kv_len into the compiled decode as a dynamic size: one graph for
        # every length, and CUDA-graph trees record one graph per (batch bucket, length bucket).
        self._kv_len_marker = torch.empty(self.context, dtype=torch.int8, device=self.device)
        self.tokenizer = load_tokenizer(serving.tokenizer_path, serving.model_path, r.model.vocab_size)
        self.limits = Limits(
            vocab_size=r.model.vocab_size,
            n_ctx=self.context,
            end_id=r.model.end_id,
            max_tokens_default=serving.max_tokens_default,
            max_tokens_limit=min(serving.max_tokens_limit, self.context - 1),
        )
        self._decode = self._forward_decode
        if r.compile_mode != "none":
            self._compile(r.compile_mode)
        self.build_seconds = time.perf_counter() - t0
        log.info(
            "engine: preset=%s params=%.0fM device=%s dtype=%s compile=%s attention=%s fp8=%s kv=%s (%.1fs)",
            r.preset, r.model.num_params() / 1e6, r.device, r.dtype, r.compile_mode,
            serving.attention_backend, r.fp8_mode, r.kv_cache_dtype, self.build_seconds,
        )

    # -- compiled hot functions -------------------------------------------------------------------------------
    def _compile(self, mode: str):
        # Only decode is compiled: it is shape-stable and launch-bound. It gets a dynamic batch dimension (one
        # graph for buckets 2..16, one for batch 1) and CUDA-graph trees record one graph per bucket. Prefill is
        # GEMM-bound at every length, so eager costs little there, while compiling it took ~55 s a graph for
        # gpt2-large on the H100 (ready time). Every Engine in a process (benchmarks, tests)
        # compiles the same two code objects, so dynamo's per-code recompile limit must cover them all.
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 1024)
        self._decode = torch.compile(self._forward_decode, mode=mode, fullgraph=True)

    def _forward_prefill(self, tokens, positions, slots, last_index, kv_len):
        # tokens, positions: [N, T]; slots, last_index: [N] -> logits [N, V]
        return self.model(tokens, positions, slots, last_index, kv_len)

    def _forward_decode(self, tokens, positions, kv_len_marker):
        # tokens, positions: [B, 1] for slots 0..B-1; kv_len_marker: [L] -> logits [B, V]
        return self.model(tokens, positions, slice(0, tokens.shape[0]), kv_len=kv_len_marker.shape[0])[:, -1]

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
        length = max(len(p) for p in prompts)
        padded = min(-(-length // PREFILL_ALIGN) * PREFILL_ALIGN, self.context - max(start))
        tokens = torch.zeros(len(prompts), padded, dtype=torch.int64)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        positions = torch.tensor(start)[:, None] + torch.arange(padded)[None, :]
        positions = positions.clamp(max=self.context - 1)
        last = torch.tensor([len(p) - 1 for p in prompts])
        kv_len = self.kv_len_for(int(positions.max()))
        to = dict(device=self.device, non_blocking=True)
        with torch.no_grad():
            return self._forward_prefill(tokens.to(**to), positions.to(**to), torch.tensor(slots).to(**to),
                                         last.to(**to), kv_len)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, max_position: int | None = None):
        """One token for each of slots 0..B-1. tokens, positions: [B] on device -> logits [B, V].
        max_position (host int, default the last cache position) bounds positions: attention reads only the
        cache up to it (kv_len_for)."""
        tokens, positions = tokens[:, None], positions[:, None]  # [B, 1]
        marker = self._kv_len_marker[: self.kv_len_for(self.context - 1 if max_position is None else max_position)]
        if self.resolved.compile_mode != "none":
            torch._dynamo.maybe_mark_dynamic(marker, 0)
            if tokens.shape[0] > 1:  # batch 1 gets its own graph anyway
                torch._dynamo.maybe_mark_dynamic(tokens, 0)
                torch._dynamo.maybe_mark_dynamic(positions, 0)
        if self.resolved.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            return self._decode(tokens, positions, marker)

    sample = staticmethod(sample)

    # -- generation for a batch of requests (dynamic batching) -----------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], record_logits: bool = False) -> list[GenerationResult]:
        """Generate for up to `slots` requests together; returns one result per request, in order."""
        n = len(requests)
        rows = bucket_for(n)
        dev = self.device
        params = SamplingParams.build(requests, rows, dev)
        max_new = max(r.max_tokens for r in requests)
        longest_prompt = max(len(r.prompt_ids) for r in requests)
        budget = torch.tensor([r.max_tokens for r in requests] + [1] * (rows - n), device=dev)
        end_id = torch.tensor([r.end_id for r in requests] + [-1] * (rows - n), device=dev)
        positions = torch.tensor([len(r.prompt_ids) for r in requests] + [0] * (rows - n), device=dev)
        out = torch.zeros(rows, max_new, dtype=torch.int64, device=dev)
        recorded: list[torch.Tensor] = []

        logits = self.prefill([r.prompt_ids for r in requests], list(range(n)))  # [n, V]
        if rows > n:
            logits = torch.cat([logits, logits.new_zeros(rows - n, logits.shape[1])])
        step = torch.zeros(rows, dtype=torch.int64, device=dev)
        stop_words = any(r.stop_words for r in requests)
        done = torch.zeros(rows, dtype=torch.bool, device=dev)
        for i in range(max_new):
            if record_logits:
                recorded.append(logits.float().cpu())
            token = self.sample(logits, params, step)
            out[:, i] = token
            done |= (token == end_id) | (i + 1 >= budget)
            if i + 1 == max_new:
                break
            if (i + 1) % self.serving.sync_every == 0:
                if stop_words:
                    self._stop_on_words(requests, out[:, : i + 1], done)
                if bool(done.all()):
                    break
            step += 1
            logits = self.decode_step(token, positions, longest_prompt + i)  # no row is further than that
            positions = torch.where(done, positions, positions + 1)  # finished rows stay in range
        return self._results(requests, out.cpu(), recorded)

    def _stop_on_words(self, requests, out: torch.Tensor, done: torch.Tensor):
        rows = out.cpu()
        for i, r in enumerate(requests):
            if r.stop_words and any(w in self.tokenizer.decode(rows[i].tolist()) for w in r.stop_words):
                done[i] = True

    def _results(self, requests, out: torch.Tensor, recorded) -> list[GenerationResult]:
        results = []
        for i, r in enumerate(requests):
            ids = out[i, : r.max_tokens].tolist()
            reason = "length"
            if r.end_id in ids:
                ids, reason = ids[: ids.index(r.end_id)], "end_id"
            text = self.tokenizer.decode(ids)
            if r.stop_words:
                ids, text, reason = self._cut_at_stop_word(ids, text, r.stop_words, reason)
            if not r.exclude_input_in_output:
                prompt = r.prompt_text if r.prompt_text is not None else self.tokenizer.decode(list(r.prompt_ids))
                text = prompt + text
            logits = [step[i] for step in recorded[: len(ids) + (reason == "end_id")]]
            results.append(GenerationResult(ids, text, len(r.prompt_ids), reason, logits))
        return results

    def _cut_at_stop_word(self, ids, text, stop_words, reason):
        hits = [text.find(w) for w in stop_words if w in text]
        if not hits:
            return ids, text, reason
        cut = min(hits)
        # Keep tokens up to the one that completed the stop word; the text ends before the stop word.
        for k in range(1, len(ids) + 1):
            if any(w in self.tokenizer.decode(ids[:k]) for w in stop_words):
                return ids[:k], text[:cut], "stop_word"
        return ids, text[:cut], "stop_word"

    # -- start-up ------------------------------------------------------------------------------------------
    def warmup(self, prompt_len: int | None = None) -> dict[int, float]:
        """Run every batch bucket once (compiles and captures each, at every KV length); seconds per bucket."""
        prompt_len = min(prompt_len or self.serving.warmup_prompt_len, self.context - 2)
        seconds = {}
        for b in BATCH_BUCKETS:
            if b > self.slots:
                break
            t0 = time.perf_counter()
            reqs = [GenerationRequest(prompt_ids=(1,) * prompt_len, max_tokens=2, end_id=-1)] * b
            self.generate(reqs)
            if self.resolved.compile_mode == "reduce-overhead":  # CUDA-graph trees record on the 2nd call
                zeros = torch.zeros(b, dtype=torch.int64, device=self.device)  # position 0: overwritten by prefill
                for kv_len in self.kv_lengths():
                    for _ in range(2):
                        self.decode_step(zeros, zeros, kv_len - 1)
            self.synchronize()
            seconds[b] = time.perf_counter() - t0
        log.info("warmup: seconds per bucket %s", {k: round(v, 2) for k, v in seconds.items()})
        return seconds

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def probe_max_abs_diff(self, reference=None, new_tokens: int = 8) -> float:
        """Largest |logit| difference between the optimized path and the eager fp32 reference path, over a
        ragged greedy probe batch. `reference` is a GPT in fp32 with the same weights (built when None)."""
        from .reference import reference_model, reference_logits

        prompts = [tuple((7 * i + 3 * j) % 256 for j in range(n)) for i, n in enumerate((5, 17, 9, 30))]
        requests = [GenerationRequest(prompt_ids=p, max_tokens=new_tokens, end_id=-1) for p in prompts]
        results = self.generate(requests, record_logits=True)
        reference = reference or reference_model(self)
        diff = 0.0
        for req, res in zip(requests, results):
            ref = reference_logits(reference, list(req.prompt_ids) + res.output_ids[:-1])[len(req.prompt_ids) - 1 :]
            opt = torch.stack(res.step_logits)
            diff = max(diff, (opt - ref).abs().max().item())
        return diff
