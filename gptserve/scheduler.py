"""In-flight batching: one engine thread runs up to `slots` sequences together, admitting newcomers every step.

Threads:
  * callers (Triton's execute()) call `submit()`: admission control only (bounded queue), never torch.
  * the engine thread owns the Engine: it builds it, warms it up and makes every torch call (compiled CUDA
    graphs belong to the thread that captured them). Each iteration it
      1. frees the slots of cancelled sequences, drops waiting requests that timed out or were cancelled, and
         admits waiting ones into the LOWEST free slots (the active set stays compact, so the decode bucket
         stays small);
      2. prefills newcomers, at most `prefill_chunk` prompt tokens per iteration (longer prompts in chunks via
         Engine.prefill(start=...)), and samples the first token of each prompt that completes;
      3. runs one decode step over bucket_for(highest busy slot + 1) and samples one token per sequence.
    A running sequence therefore waits at most one prefill chunk between two of its tokens.
  * the delivery thread makes every call into the outside world (sink.deliver, sink.is_cancelled, metric
    observers), so Triton IPC never stalls a decode step. Events of one sequence are delivered in order;
    its final event is the last one. The engine thread runs at most MAX_LAG iterations ahead of it
    (backpressure), so tokens reach clients as they are made and a cancel takes effect within ~2 steps.

Sinks (one per request) are duck-typed:
    sink.deliver(event)     event is a Token, Final or Failure (see below); called on the delivery thread
    sink.is_cancelled()     polled on the delivery thread before a round of deliveries, at most every
                            RUNNING_POLL_S for running sequences and WAITING_POLL_S for waiting ones

Tokens, and their order, equal Engine.generate's for the same request: prefill logits give output 0, each
decode step output k at position len(prompt) + k - 1, and sampling is keyed on (seed, output index k).
"""
from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .engine import bucket_for
from .requests import GenerationRequest
from .sampling import SamplingParams
from .tokenizer import IncrementalDecoder

log = logging.getLogger("gptserve")

WAITING_POLL_S = 0.1  # cancellation poll period for requests still waiting for a slot
# ... and for running ones: each poll is an IPC round trip per sequence (as costly as sending a token), so not
# every step; a cancel still stops its sequence within ~10 ms plus MAX_LAG steps.
RUNNING_POLL_S = 0.01
IDLE_POLL_S = 0.05  # delivery thread: cancellation poll period while the engine thread posts nothing
MAX_LAG = 2  # engine iterations the engine thread may run ahead of the delivery thread
MAX_CONSECUTIVE_FAILURES = 3  # engine errors in a row before the engine thread gives up


# -- events sent to sinks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """Streaming only: one new token (ids holds exactly one id) and the text it completes (may be "")."""

    ids: list[int]
    text: str


@dataclass(frozen=True)
class Final:
    """The last event of a successful request.

    stream=True: ids == [] and text holds only text not sent yet (usually "": bytes held back as an incomplete
    UTF-8 sequence at the end); stream=False: every output id and the whole text (prompt first unless
    exclude_input_in_output), as gpt_large answers.
    """

    ids: list[int]
    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str  # "length", "end_id" or "stop_word"


@dataclass(frozen=True)
class Failure:
    """The last event of a request that did not complete. code: UNAVAILABLE, CANCELLED or INTERNAL."""

    code: str
    message: str


class Observer:
    """Metric hooks, all called on the delivery thread. The default does nothing."""

    def gauges(self, in_flight: int, waiting: int) -> None: ...
    def batch(self, rows: int) -> None: ...  # sequences in one decode step
    def first_token(self, seconds: float) -> None: ...  # submit -> first token sampled
    def success(self, num_input_tokens: int, num_output_tokens: int, seconds: float,
                per_output_token: float | None) -> None: ...
    def failure(self, code: str) -> None: ...
    def engine_died(self, reason: str) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    max_queue_size: int = 64  # waiting requests beyond the free slots; more are answered UNAVAILABLE
    queue_timeout_s: float = 5.0  # longest wait for a slot; then UNAVAILABLE
    prefill_chunk: int = 512  # prompt tokens prefilled per engine iteration; longer prompts go in chunks
    max_slots: int = 0  # 0: all of the engine's KV-cache slots
    drain_timeout_s: float = 10.0  # stop(): how long running sequences may still take
    step_delay_s: float = 0.0  # test hook: sleep after every decode step (slow generations on a fast CPU)


# -- one request's state ----------------------------------------------------------------------------------------
@dataclass
class _Step:
    """A decode step queued on the device and not yet read back."""

    tokens: torch.Tensor  # [rows] sampled tokens, by slot
    seqs: list  # the _Seqs it advances


_ids = itertools.count()


@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    sink: Any
    submitted: float
    id: int = field(default_factory=lambda: next(_ids))
    slot: int | None = None
    prefilled: int = 0  # prompt tokens whose KV is in the slot
    ids: list[int] = field(default_factory=list)  # output ids so far (end id excluded)
    last: int = 0  # the last output id: the next decode step's input
    text: str = ""  # output text so far (complete characters only)
    sent: int = 0  # chars of `text` already streamed
    decoder: IncrementalDecoder | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancel_requested: bool = False  # set by the delivery thread
    closed: bool = False  # final event queued; nothing more may follow
    ttft_reported: bool = False  # delivery thread

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_ids)

    @property
    def decoding(self) -> bool:
        return self.slot is not None and self.prefilled == self.prompt_len and not self.closed


class Scheduler:
    """submit() requests from any thread; results reach each request's sink from the delivery thread."""

    def __init__(self, engine_factory: Callable[[], Any], config: SchedulerConfig = SchedulerConfig(),
                 observer: Observer | None = None, on_ready: Callable[[Any], None] | None = None):
        """engine_factory() runs on the engine thread and returns the Engine; on_ready(engine) runs there next
        (warm-up, probes): both must make every torch call of start-up."""
        self.config = config
        self.observer = observer or Observer()
        self._factory = engine_factory
        self._on_ready = on_ready
        self.engine = None
        self.slots = 0
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._live: dict[int, _Seq] = {}  # waiting and running, for the cancellation poll
        self._free = 0  # free slots as the engine thread last saw them (admission bound)
        self._stopping = False
        self._outbox_closed = False
        self._lag = 0  # engine iterations posted but not yet delivered
        self._dead: str | None = None  # why the engine thread is gone
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._params_key: tuple | None = None
        self._params: SamplingParams | None = None
        self._in_flight: _Step | None = None  # the decode step launched last, not yet read back
        self._next_tokens: torch.Tensor | None = None  # [slots] on the device: its sampled tokens, by slot
        self._last_gauges: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._engine_main, name="gptserve-engine", daemon=True)
        self._delivery = threading.Thread(target=self._delivery_main, name="gptserve-delivery", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "Scheduler":
        """Start both threads; block until the engine is built and warmed up (re-raises its start-up error)."""
        self._delivery.start()
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"engine thread not ready after {timeout} s")
        if self._startup_error is not None:
            self._outbox.put(None)
            self._delivery.join(5)
            raise self._startup_error
        return self

    @property
    def alive(self) -> bool:
        """False once the engine thread has died (or stopped): submit() then answers UNAVAILABLE."""
        return self._thread.is_alive() and self._dead is None and self._ready.is_set()

    @property
    def dead_reason(self) -> str | None:
        return self._dead

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop admission (new and waiting requests: UNAVAILABLE), let running sequences finish for up to
        drain_timeout seconds (the rest: UNAVAILABLE), join the engine thread, flush deliveries."""
        drain = self.config.drain_timeout_s if drain_timeout is None else drain_timeout
        with self._lock:
            self._stopping = True
            self._drain_deadline = time.monotonic() + drain
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(drain + 30)
            if self._thread.is_alive():
                log.error("scheduler: engine thread did not stop within %.0f s", drain + 30)
        self._outbox.put(None)
        if self._delivery.is_alive():
            self._delivery.join(30)
        with self._lock:
            self._outbox_closed = True
        while True:  # anything posted after the delivery thread's last look
            try:
                batch = self._outbox.get_nowait()
            except queue.Empty:
                break
            for seq, event in batch or ():
                self._deliver(seq, event)

    # -- admission (any thread) -------------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, sink, submitted: float | None = None) -> bool:
        """Queue a parsed request. Returns False when it was refused (sink then gets UNAVAILABLE)."""
        seq = _Seq(req, sink, time.perf_counter() if submitted is None else submitted)
        with self._lock:
            if self._dead is not None:
                reason = f"gpt_large_stream engine is not running ({self._dead}); the model must be reloaded"
            elif self._stopping:
                reason = "the model is shutting down and admits no new requests"
            elif len(self._waiting) >= self.config.max_queue_size + self._free:
                reason = (f"server busy: all {self.slots} generation slots are in use and "
                          f"{len(self._waiting) - self._free} requests are already waiting "
                          f"(max_queue_size={self.config.max_queue_size}); retry later")
            else:
                self._waiting.append(seq)
                self._live[seq.id] = seq
                self._lock.notify_all()
                reason = None
            if reason is not None:
                seq.closed = True
                if not self._outbox_closed:
                    self._post([(seq, Failure("UNAVAILABLE", reason))])
        if reason is not None:
            if self._outbox_closed:  # stopped: no delivery thread any more, answer here
                self._deliver(seq, Failure("UNAVAILABLE", reason))
            return False
        return True

    def counts(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._lock:
            return len(self._live) - len(self._waiting), len(self._waiting)

    # -- engine thread --------------------------------------------------------------------------------------
    def _engine_main(self):
        try:
            self.engine = self._factory()
            self.slots = min(self.config.max_slots or self.engine.slots, self.engine.slots)
            if self._on_ready is not None:
                self._on_ready(self.engine)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            log.exception("scheduler: engine start-up failed")
            self._startup_error = exc
            self._dead = f"start-up failed: {exc}"
            self._ready.set()
            return
        self._slot_seq: list[_Seq | None] = [None] * self.slots
        self._free = self.slots
        self._next_tokens = torch.zeros(self.engine.slots, dtype=torch.int64, device=self.engine.device)
        self._ready.set()
        log.info("scheduler: %d slots, max_queue_size=%d, queue_timeout=%.1fs, prefill_chunk=%d",
                 self.slots, self.config.max_queue_size, self.config.queue_timeout_s, self.config.prefill_chunk)
        try:
            with torch.no_grad():
                self._loop()
        except BaseException as exc:  # noqa: BLE001 - the thread dies; say so loudly and fail everyone
            log.critical("scheduler: ENGINE THREAD DIED: %r; gpt_large_stream answers UNAVAILABLE until "
                         "it is reloaded", exc, exc_info=True)
            with self._lock:
                self._dead = f"engine thread died: {exc!r}"
                victims = list(self._live.values())
                self._waiting.clear()
                self._live.clear()
            self._post([(s, Failure("UNAVAILABLE", f"generation engine failed: {exc!r}"))
                        for s in victims if not s.closed])
            self._post([(None, ("dead", self._dead))])
            self._post_gauges(force=True)

    def _loop(self):
        failures = 0
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._running():
                    self._lock.wait()
                if self._stopping:
                    if self._waiting:
                        self._fail_locked(list(self._waiting), "UNAVAILABLE",
                                          "the model is shutting down; the request was not started")
                        self._waiting.clear()
                    if not self._running():
                        return
                    if time.monotonic() > self._drain_deadline:
                        self._fail_locked([s for s in self._slot_seq if s is not None], "UNAVAILABLE",
                                          "the model was unloaded before the request finished")
                        self._slot_seq = [None] * self.slots
                        return
                # Backpressure: stay at most MAX_LAG iterations ahead of the delivery thread, so clients get
                # tokens as they are made and a cancel stops its sequence within a step or two.
                while self._lag > MAX_LAG and not self._stopping and self._delivery.is_alive():
                    self._lock.wait(0.1)
            out = []
            try:
                self._iteration(out)
                failures = 0
            except Exception as exc:  # an engine fault fails the running sequences, not the server
                failures += 1
                log.exception("scheduler: engine step failed (%d in a row)", failures)
                self._post(out)  # what the iteration produced before the fault, then the failures
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
                with self._lock:
                    self._fail_locked([s for s in self._slot_seq if s is not None], "INTERNAL",
                                      f"generation failed: {exc!r}")
                    self._slot_seq = [None] * self.slots
                    self._free = self.slots
                self._in_flight = None
            self._post_gauges()

    def _running(self) -> bool:
        return any(s is not None for s in self._slot_seq)

    def _fail_locked(self, seqs, code: str, message: str):
        for s in seqs:
            self._live.pop(s.id, None)
            if not s.closed:
                s.closed = True
                self._post([(s, Failure(code, message))])

    def _admit_locked(self) -> list:
        """Expire / drop cancelled waiting requests; admit the rest into the lowest free slots."""
        out = []
        now = time.perf_counter()
        timeout = self.config.queue_timeout_s
        keep = collections.deque()
        for s in self._waiting:
            if s.cancel_requested:
                out.append((s, Failure("CANCELLED", "request cancelled while waiting for a slot")))
            elif now - s.submitted > timeout:
                out.append((s, Failure(
                    "UNAVAILABLE", f"server busy: no generation slot became free within {timeout:g} s "
                                   f"(queue_timeout_ms={timeout * 1000:.0f}); retry later")))
            else:
                keep.append(s)
                continue
            s.closed = True
            self._live.pop(s.id, None)
        self._waiting = keep
        for slot in range(self.slots):
            if not self._waiting:
                break
            if self._slot_seq[slot] is None:
                s = self._waiting.popleft()
                s.slot = slot
                s.decoder = IncrementalDecoder(self.engine.tokenizer)
                self._slot_seq[slot] = s
        self._free = sum(s is None for s in self._slot_seq)
        return out

    def _release(self, s: _Seq):
        """Free s's slot (engine thread)."""
        if s.slot is not None and self._slot_seq[s.slot] is s:
            self._slot_seq[s.slot] = None
        with self._lock:
            self._live.pop(s.id, None)
            self._free = sum(x is None for x in self._slot_seq)

    def _iteration(self, out: list):
        eng = self.engine
        # 1. cancellations free their slots, then waiting requests take the lowest free slots
        for s in self._slot_seq:
            if s is not None and s.cancel_requested:
                s.closed = True
                out.append((s, Failure("CANCELLED", f"request cancelled after {len(s.ids)} output tokens")))
                self._release(s)
        with self._lock:
            out.extend(self._admit_locked())
        # 2. prefill, within the chunk budget, oldest first
        pending = sorted((s for s in self._slot_seq if s is not None and s.prefilled < s.prompt_len),
                         key=lambda s: s.submitted)
        # Pieces are whole prompts up to prefill_chunk tokens, else prefill_chunk-token chunks from position 0:
        # how a prompt is cut never depends on other traffic. The first piece always goes; more while they fit.
        chunk = self.config.prefill_chunk
        budget, work = chunk, []
        for s in pending:
            n = min(chunk, s.prompt_len - s.prefilled)
            if work and n > budget:
                break
            work.append((s, s.prefilled, s.req.prompt_ids[s.prefilled: s.prefilled + n]))
            budget -= n
        for group in self._prefill_groups(work):
            logits = eng.prefill([c for _, _, c in group], [s.slot for s, _, _ in group], [st for _, st, _ in group])
            done = []
            for row, (s, start, chunk) in enumerate(group):
                s.prefilled = start + len(chunk)
                if s.prefilled == s.prompt_len:
                    done.append((row, s))
            if done:
                rows = [r for r, _ in done]
                params = SamplingParams.build([s.req for _, s in done], len(done), eng.device)
                step = torch.zeros(len(done), dtype=torch.int64, device=eng.device)
                tokens = self._host(eng.sample(logits[rows], params, step))
                now = time.perf_counter()
                for (_, s), tok in zip(done, tokens):
                    s.first_token_at = now
                    self._accept(s, tok, now, out)
        # 3. one decode step for every sequence that has a token to feed, launched BEFORE the previous step's
        #    tokens are read back: the host work of one step (reading, streaming, stop checks, the next launch)
        #    overlaps the GPU work of the next. A sequence in the previous step is fed that step's sampled token
        #    straight from the device; if it then turns out to have ended, its extra token is dropped (its
        #    slot's KV past the end is never read: a new owner overwrites every position before reading it).
        prev = self._in_flight
        ahead = {s.id for s in prev.seqs} if prev else set()  # one token further than s.ids on the device
        active = [s for s in self._slot_seq
                  if s is not None and s.decoding and len(s.ids) + (s.id in ahead) < s.req.max_tokens]
        self._in_flight = self._launch(active, ahead) if active else None
        if prev is not None:
            tokens = self._host(prev.tokens)
            if self.config.step_delay_s:
                time.sleep(self.config.step_delay_s)
            now = time.perf_counter()
            out.append((None, ("batch", len(prev.seqs))))
            for s in prev.seqs:
                if not s.closed:  # cancelled meanwhile, or ended in an earlier step
                    self._accept(s, tokens[s.slot], now, out)
        with self._lock:
            self._lag += 1
        out.append((None, ("step", None)))
        self._post(out)

    def _launch(self, active: list[_Seq], ahead: set[int]) -> "_Step":
        """Queue one decode step + sampling on the device for `active` (rows = slots 0..bucket-1)."""
        eng = self.engine
        rows = min(bucket_for(max(s.slot for s in active) + 1), self.slots)
        tok, pos, step, from_device, key = [0] * rows, [0] * rows, [0] * rows, [0] * rows, [None] * rows
        active_ids = {s.id for s in active}
        for slot in range(rows):
            s = self._slot_seq[slot]
            if s is None:
                continue
            if s.id in active_ids:
                k = len(s.ids) + (s.id in ahead)  # the output index this step produces
                tok[slot], pos[slot], step[slot], key[slot] = s.last, s.prompt_len + k - 1, k, s.id
                from_device[slot] = int(s.id in ahead)
            elif s.decoding:  # its last token is still in flight: the garbage row writes past its end
                pos[slot] = min(s.prompt_len + len(s.ids), eng.context - 1)
            else:  # mid-prefill: the garbage row writes where the next chunk will write anyway
                pos[slot] = s.prefilled
        dev = torch.tensor([tok, pos, step, from_device], dtype=torch.int64).to(eng.device)
        tokens = torch.where(dev[3].bool(), self._next_tokens[:rows], dev[0])
        logits = eng.decode_step(tokens, dev[1], max(pos))
        sampled = eng.sample(logits, self._sampling_params(tuple(key)), dev[2])
        self._next_tokens[:rows].copy_(sampled)
        return _Step(sampled, active)

    def _host(self, tokens: torch.Tensor) -> list[int]:
        """tokens.tolist(), waiting for the GPU without the GIL (tolist would hold it for the whole step), so
        the delivery thread streams the previous step's tokens meanwhile."""
        self.engine.synchronize()
        return tokens.tolist()

    def _prefill_groups(self, work):
        """Split prefill work into Engine.prefill calls whose padded length fits every row's context."""
        n_ctx = self.engine.context
        groups, cur = [], []
        for item in work:
            trial = cur + [item]
            if cur and max(len(c) for _, _, c in trial) > n_ctx - max(st for _, st, _ in trial):
                groups.append(cur)
                trial = [item]
            cur = trial
        if cur:
            groups.append(cur)
        return groups

    def _sampling_params(self, key: tuple) -> SamplingParams:
        """Sampling settings per decode row, rebuilt only when the rows' sequences change."""
        if key != self._params_key:
            filler = GenerationRequest(prompt_ids=(0,), max_tokens=1)
            by_id = {s.id: s for s in self._slot_seq if s is not None}
            reqs = [by_id[k].req if k is not None else filler for k in key]
            self._params = SamplingParams.build(reqs, len(reqs), self.engine.device)
            self._params_key = key
        return self._params

    def _accept(self, s: _Seq, tok: int, now: float, out: list):
        """Take one sampled token of s: stream it, and finish s on end id, stop word or max_tokens."""
        req = s.req
        s.last_token_at = now
        if tok == req.end_id:
            return self._finish(s, "end_id", out)
        s.ids.append(tok)
        s.last = tok
        before = len(s.text)
        s.text += s.decoder.push([tok])
        if req.stop_words:
            cut = _find_stop(s.text, req.stop_words, before)
            if cut is not None:
                s.text = s.text[:cut]
                if req.stream:
                    out.append((s, Token([tok], self._take_text(s, len(s.text)))))
                return self._finish(s, "stop_word", out)
        if req.stream:
            safe = len(s.text) - _held_back(s.text, req.stop_words)
            out.append((s, Token([tok], self._take_text(s, safe))))
        if len(s.ids) >= req.max_tokens:
            return self._finish(s, "length", out)

    @staticmethod
    def _take_text(s: _Seq, upto: int) -> str:
        upto = max(upto, s.sent)
        delta, s.sent = s.text[s.sent: upto], upto
        return delta

    def _finish(self, s: _Seq, reason: str, out: list):
        req = s.req
        if reason != "stop_word":
            before = len(s.text)
            s.text += s.decoder.push([], final=True)  # bytes held back as an incomplete character
            cut = _find_stop(s.text, req.stop_words, before) if req.stop_words else None
            if cut is not None:
                s.text, reason = s.text[:cut], "stop_word"
        if req.stream:
            final = Final([], self._take_text(s, len(s.text)), s.prompt_len, len(s.ids), reason)
        else:
            text = s.text
            if not req.exclude_input_in_output:
                prompt = req.prompt_text if req.prompt_text is not None else \
                    self.engine.tokenizer.decode(list(req.prompt_ids))
                text = prompt + text
            final = Final(list(s.ids), text, s.prompt_len, len(s.ids), reason)
        s.closed = True
        out.append((s, final))
        self._release(s)

    # -- delivery ---------------------------------------------------------------------------------------------
    def _post(self, items):
        if items:
            self._outbox.put(list(items))
            items.clear()

    def _post_gauges(self, force: bool = False):
        with self._lock:
            gauges = (len(self._live) - len(self._waiting), len(self._waiting))
        if force or gauges != self._last_gauges:
            self._last_gauges = gauges
            self._outbox.put([(None, ("gauges", gauges))])

    def _delivery_main(self):
        last_poll = {"running": 0.0, "waiting": 0.0}
        while True:
            try:
                batches = [self._outbox.get(timeout=IDLE_POLL_S)]
            except queue.Empty:
                batches = []
            while True:  # take everything already queued: one cancellation poll per round
                try:
                    batches.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            # Poll before delivering: a cancel is seen even when tokens are backlogged.
            now = time.monotonic()
            due = {kind: now - last_poll[kind] >= period
                   for kind, period in (("running", RUNNING_POLL_S), ("waiting", WAITING_POLL_S))}
            last_poll.update({kind: now for kind, is_due in due.items() if is_due})
            self._poll_cancellations(due["running"], due["waiting"])
            for batch in batches:
                if batch is None:
                    return
                for seq, event in batch:
                    try:
                        self._deliver(seq, event)
                    except Exception:  # noqa: BLE001 - one client's failure must not stop the others
                        log.exception("scheduler: delivery failed")

    def _poll_cancellations(self, running: bool, waiting: bool):
        with self._lock:
            live = list(self._live.values())
        for s in live:
            if s.cancel_requested or s.closed or not (waiting if s.slot is None else running):
                continue
            try:
                if s.sink.is_cancelled():
                    s.cancel_requested = True
                    with self._lock:
                        self._lock.notify_all()
            except Exception:  # noqa: BLE001
                log.exception("scheduler: is_cancelled failed")

    def _deliver(self, seq, event):
        obs = self.observer
        if seq is None:
            kind, value = event
            if kind == "step":
                with self._lock:
                    self._lag -= 1
                    self._lock.notify_all()
            elif kind == "gauges":
                obs.gauges(*value)
            elif kind == "batch":
                obs.batch(value)
            elif kind == "dead":
                obs.engine_died(value)
            return
        if isinstance(event, (Token, Final)) and seq.first_token_at is not None and not seq.ttft_reported:
            seq.ttft_reported = True
            obs.first_token(seq.first_token_at - seq.submitted)
        if isinstance(event, Final):
            end = seq.last_token_at or time.perf_counter()
            tpot = None
            if event.num_output_tokens > 1 and seq.first_token_at is not None:
                tpot = (end - seq.first_token_at) / (event.num_output_tokens - 1)
            obs.success(event.num_input_tokens, event.num_output_tokens, time.perf_counter() - seq.submitted, tpot)
        elif isinstance(event, Failure):
            obs.failure(event.code)
        seq.sink.deliver(event)


def _find_stop(text: str, words, searched_upto: int) -> int | None:
    """Index of the earliest stop word in text, looking only where a new match can start."""
    longest = max(len(w) for w in words)
    start = max(0, searched_upto - longest + 1)
    hits = [i for i in (text.find(w, start) for w in words) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, words) -> int:
    """Chars at the end of text that could begin a stop word: not streamed until that is decided."""
    if not words:
        return 0
    for k in range(min(len(text), max(len(w) for w in words) - 1), 0, -1):
        tail = text[-k:]
        if any(w.startswith(tail) for w in words):
            return k
    return 0


__all__ = ["Scheduler", "SchedulerConfig", "Observer", "Token", "Final", "Failure"]
