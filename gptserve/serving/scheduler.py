"""In-flight batching: one engine thread runs up to `slots` sequences together, admitting newcomers every step.

Threads:
  * callers (Triton's execute()) call submit(): admission only, never torch. A request waits for a slot here
    (at most max_queue_size of them, each at most queue_timeout_ms). With several instances, execute() also calls
    wait_for_room(), which blocks while every slot is spoken for, so Triton gives the next request to an instance
    with room.
  * the engine thread owns the Engine: it builds it, warms it up and makes every torch call (compiled CUDA
    graphs belong to the thread that captured them). Each step it
      1. ends cancelled sequences and requests that waited too long, and admits waiting requests into the
         LOWEST free slots (the active set stays compact, so the decode bucket stays small);
      2. launches one decode step for every sequence with a token to feed, sampling on the device;
      3. reads back everything launched before that step (its only wait for the device), so the host's token
         work overlaps the device's next step: each token goes through the sequence's Finisher to its Outbox;
      4. launches prefill for waiting prompts, at most `prefill_chunk` tokens, sampling the first token of every
         prompt it completes into the device-side token buffer the next decode reads. On a GPU each prompt's
         chunk is one CUDA-graph replay (engine/graphs.py).
    A running sequence therefore never waits for more than one prefill chunk between two tokens.
  * delivery threads send each request's responses (delivery.py), a timer checks cancellations
    (cancellation.py), and one thread reports metrics (telemetry.py): no IPC on the engine thread.

Tokens equal Engine.generate's for the same request: prefill logits give output 0, decode step k gives output k
at position len(prompt) + k - 1, and sampling is keyed on (seed, output index k). A sequence whose previous
token is still on the device is fed that token straight from the device buffer; when it turns out to have
ended, the extra token is dropped (its slot's KV past the end is never read: a new owner overwrites every
position before reading it).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..engine import bucket_for
from ..engine.sampling import SamplingParams
from .cancellation import CancelWatch
from .delivery import Delivery, Outbox
from .events import Completed, EngineDied, Failed, Failure, Final, FirstToken, Observer, Occupancy, Sink, StepRows
from .requests import GenerationRequest
from .stopping import Finisher
from .telemetry import Telemetry

log = logging.getLogger("gptserve")

MAX_CONSECUTIVE_FAILURES = 3  # engine errors in a row before the engine thread gives up

_ids = itertools.count()


@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    outbox: Outbox
    finisher: Finisher
    submitted: float
    id: int = field(default_factory=lambda: next(_ids))
    slot: int | None = None
    prefilled: int = 0  # prompt tokens whose KV is in the slot
    in_flight: int = 0  # tokens sampled on the device and not read back yet
    cancelled: bool = False  # set by the cancel watch
    closed: bool = False  # final response handed to the outbox; nothing more may follow
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_ids)

    @property
    def next_index(self) -> int:
        """The output index of the next token to sample."""
        return len(self.finisher.ids) + self.in_flight

    @property
    def decoding(self) -> bool:
        return self.slot is not None and self.prefilled == self.prompt_len and not self.closed


@dataclass
class _Readback:
    """Sampled tokens on their way to the host: entries are (sequence, index into the values)."""

    values: torch.Tensor  # host memory
    done: Any  # torch.cuda.Event recorded after the copy, or None on a CPU
    entries: list[tuple[_Seq, int]]
    decode_rows: int = 0  # sequences advanced, when this is a decode step


class Scheduler:
    """submit() requests from any thread; responses reach each request's sink from the delivery threads."""

    def __init__(self, engine_factory: Callable[[], Any], settings, observer: Observer | None = None,
                 on_ready: Callable[[Any], None] | None = None):
        """settings: a ServingConfig (queue_timeout_ms, max_queue_size, prefill_chunk, stream_interval,
        delivery_threads, cancel_check_ms, drain_timeout_ms, step_delay_ms). engine_factory() runs on the engine
        thread and returns the Engine; on_ready(engine) runs there next (warm-up, probes): both make every torch
        call of start-up."""
        self.settings = settings
        self._factory = engine_factory
        self._on_ready = on_ready
        self.engine = None
        self.slots = 0
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._live: dict[int, _Seq] = {}  # waiting and running
        self._slot_seq: list[_Seq | None] = []
        self._free = 0  # free slots (admission)
        self._stopping = False
        self._drain_deadline = 0.0
        self._dead: str | None = None  # why the engine thread is gone
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._pending: collections.deque[_Readback] = collections.deque()
        self._next_tokens: torch.Tensor | None = None  # [bucket rows] on the device: each slot's latest sampled token
        self._params_key: tuple | None = None
        self._params: SamplingParams | None = None
        self._occupancy: tuple | None = None
        self.delivery = Delivery(settings.delivery_threads, settings.stream_interval)
        self._delivery_open = True
        self.telemetry = Telemetry(observer)
        self._cancel_watch = CancelWatch(settings.cancel_check_ms / 1000, self._watched, self._cancel)
        self._thread = threading.Thread(target=self._engine_main, name="gptserve-engine", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> "Scheduler":
        """Start every thread; block until the engine is built and warmed up (re-raises its start-up error)."""
        self.delivery.start()
        self.telemetry.start()
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"engine thread not ready after {timeout} s")
        if self._startup_error is not None:
            self.delivery.stop(5)
            self.telemetry.stop()
            raise self._startup_error
        self._cancel_watch.start()
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
        drain_timeout seconds (the rest: UNAVAILABLE), then flush every response and end the threads."""
        drain = self.settings.drain_timeout_ms / 1000 if drain_timeout is None else drain_timeout
        with self._lock:
            self._stopping = True
            self._drain_deadline = time.monotonic() + drain
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(drain + 30)
            if self._thread.is_alive():
                log.error("scheduler: engine thread did not stop within %.0f s", drain + 30)
        self._cancel_watch.stop()
        self.delivery.stop()
        with self._lock:
            self._delivery_open = False
        self.telemetry.stop()

    # -- admission (any thread) -------------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, sink: Sink, submitted: float | None = None) -> bool:
        """Queue a parsed request. Returns False when it was refused (sink then gets UNAVAILABLE)."""
        with self._lock:
            if self._dead is not None:
                reason = f"the generation engine is not running ({self._dead}); the model must be reloaded"
            elif self._stopping:
                reason = "the model is shutting down and admits no new requests"
            elif len(self._waiting) - self._free >= self.settings.max_queue_size:
                reason = (f"server busy: {self.settings.max_queue_size} requests already wait for a generation "
                          f"slot (max_queue_size); retry later")
            else:
                seq = _Seq(req, self.delivery.open(sink), Finisher(req, self.engine.tokenizer),
                           time.perf_counter() if submitted is None else submitted)
                self._waiting.append(seq)
                self._live[seq.id] = seq
                self._lock.notify_all()
                return True
            delivery_open = self._delivery_open
        refusal = Failure("UNAVAILABLE", reason)
        self.telemetry.post(Failed(refusal.code))
        if delivery_open:
            self.delivery.open(sink).close(refusal)
        else:  # stopped: no delivery thread any more, answer here
            sink.deliver(refusal)
        return False

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until a newly submitted request would get a slot at once (or the scheduler is stopping or
        dead); False on timeout."""
        with self._lock:
            return self._lock.wait_for(
                lambda: len(self._waiting) < self._free or self._stopping or self._dead is not None, timeout)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._lock:
            return len(self._live) - len(self._waiting), len(self._waiting)

    def _watched(self) -> list[_Seq]:
        with self._lock:
            return [s for s in self._live.values() if not s.cancelled and not s.closed]

    def _cancel(self, seq: _Seq):
        with self._lock:
            seq.cancelled = True
            self._lock.notify_all()

    # -- engine thread --------------------------------------------------------------------------------------
    def _engine_main(self):
        try:
            self.engine = self._factory()
            self.slots = self.engine.slots
            if self._on_ready is not None:
                self._on_ready(self.engine)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            log.exception("scheduler: engine start-up failed")
            self._startup_error = exc
            self._dead = f"start-up failed: {exc}"
            self._ready.set()
            return
        self._slot_seq = [None] * self.slots
        self._free = self.slots
        # [bucket rows]: the largest bucket may pass the last slot (16 rows for 12 slots)
        self._next_tokens = torch.zeros(bucket_for(self.slots), dtype=torch.int64, device=self.engine.device)
        self._ready.set()
        log.info("scheduler: %d slots, queue_timeout=%d ms, prefill_chunk=%d, stream_interval=%d, "
                 "%d delivery threads", self.slots, self.settings.queue_timeout_ms, self.settings.prefill_chunk,
                 self.settings.stream_interval, self.settings.delivery_threads)
        self._report_occupancy()
        try:
            with torch.no_grad():
                self._loop()
        except BaseException as exc:  # noqa: BLE001 - the thread dies; say so loudly and fail everyone
            log.critical("scheduler: ENGINE THREAD DIED: %r; every request is answered UNAVAILABLE until the model "
                         "is reloaded", exc, exc_info=True)
            with self._lock:
                self._dead = f"engine thread died: {exc!r}"
                self._fail_locked(list(self._live.values()), "UNAVAILABLE", f"generation engine failed: {exc!r}")
                self._lock.notify_all()
            self.telemetry.post(EngineDied(self._dead))
            self._report_occupancy()

    def _loop(self):
        failures = 0
        while True:
            with self._lock:
                while not (self._stopping or self._waiting or self._running() or self._pending):
                    self._lock.wait()
                if self._stopping and self._shut_down_locked():
                    return
            try:
                if self._step():  # a decode step went through: the engine works
                    failures = 0
            except Exception as exc:  # an engine fault fails the running sequences, not the server
                failures += 1
                log.exception("scheduler: engine step failed (%d in a row)", failures)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
                self._pending.clear()
                with self._lock:
                    self._fail_locked([s for s in self._slot_seq if s is not None], "INTERNAL",
                                      f"generation failed: {exc!r}")
            self._report_occupancy()

    def _shut_down_locked(self) -> bool:
        """While stopping: refuse waiting requests; True when the engine thread may end."""
        if self._waiting:
            self._fail_locked(list(self._waiting), "UNAVAILABLE", "the model is shutting down; the request was "
                                                                  "not started")
        if not self._running() and not self._pending:
            return True
        if time.monotonic() > self._drain_deadline:
            self._fail_locked([s for s in self._slot_seq if s is not None], "UNAVAILABLE",
                              "the model was unloaded before the request finished")
            self._pending.clear()
            return True
        return False

    def _running(self) -> bool:
        return any(s is not None for s in self._slot_seq)

    def _step(self) -> bool:
        """One engine step; True when it launched a decode step."""
        with self._lock:
            self._drop_cancelled_locked()
            self._admit_locked()
        decode = self._launch_decode()
        while self._pending and self._pending[0] is not decode:  # everything launched before this decode step
            self._read(self._pending.popleft())
        self._launch_prefill()
        if self.settings.step_delay_ms:
            time.sleep(self.settings.step_delay_ms / 1000)
        return decode is not None

    # -- admission and release (engine thread, under the lock) -------------------------------------------------
    def _drop_cancelled_locked(self):
        for s in self._slot_seq:
            if s is not None and (s.cancelled or s.outbox.broken):
                self._fail_locked([s], "CANCELLED", f"request cancelled after {len(s.finisher.ids)} output tokens")

    def _admit_locked(self):
        """Drop cancelled and expired waiting requests; admit the rest into the lowest free slots."""
        timeout = self.settings.queue_timeout_ms / 1000
        now = time.perf_counter()
        for s in list(self._waiting):
            if s.cancelled:
                self._fail_locked([s], "CANCELLED", "request cancelled while waiting for a slot")
            elif now - s.submitted > timeout:
                self._fail_locked([s], "UNAVAILABLE", f"server busy: no generation slot became free within "
                                                      f"{timeout:g} s (queue_timeout_ms); retry later")
        for slot in range(self.slots):
            if not self._waiting:
                break
            if self._slot_seq[slot] is None:
                s = self._waiting.popleft()
                s.slot = slot
                self._slot_seq[slot] = s
        self._free = sum(s is None for s in self._slot_seq)

    def _fail_locked(self, seqs, code: str, message: str):
        failure = Failure(code, message)
        for s in seqs:
            if s.closed:
                continue
            s.closed = True
            s.outbox.close(failure)
            self.telemetry.post(Failed(code))
            self._release_locked(s)

    def _release_locked(self, s: _Seq):
        self._live.pop(s.id, None)
        if s.slot is not None and self._slot_seq[s.slot] is s:
            self._slot_seq[s.slot] = None
        elif s in self._waiting:
            self._waiting.remove(s)
        self._free = sum(x is None for x in self._slot_seq)
        self._lock.notify_all()

    # -- the device work ----------------------------------------------------------------------------------------
    def _launch_decode(self) -> _Readback | None:
        """Queue one decode step + sampling for every sequence with a token to feed (rows = slots 0..bucket-1)."""
        active = [s for s in self._slot_seq if s is not None and s.decoding and s.next_index < s.req.max_tokens]
        if not active:
            return None
        eng = self.engine
        rows = bucket_for(max(s.slot for s in active) + 1)
        tok, pos, step, from_device, key = [0] * rows, [0] * rows, [0] * rows, [0] * rows, [None] * rows
        for s in active:
            k = s.next_index
            last = s.finisher.ids[-1] if s.finisher.ids else 0
            tok[s.slot], pos[s.slot], step[s.slot], key[s.slot] = last, s.prompt_len + k - 1, k, s.id
            from_device[s.slot] = int(s.in_flight > 0)
        for slot in range(min(rows, self.slots)):  # rows of other slots are computed too: keep their writes harmless
            s = self._slot_seq[slot]
            if key[slot] is None and s is not None:
                # decoding: past its last token; mid-prefill: where its next chunk writes anyway
                pos[slot] = min(s.prompt_len + s.next_index, eng.context - 1) if s.decoding else s.prefilled
        inputs = eng.stage([tok, pos, step, from_device])
        tokens = torch.where(inputs[3].bool(), self._next_tokens[:rows], inputs[0])
        logits = eng.decode_step(tokens, inputs[1], max(pos))
        sampled = eng.sample(logits, self._decode_params(tuple(key)), inputs[2])
        self._next_tokens[:rows].copy_(sampled)
        for s in active:
            s.in_flight += 1
        return self._queue_readback(sampled, [(s, s.slot) for s in active], decode_rows=len(active))

    def _launch_prefill(self):
        """Prefill waiting prompts oldest first, at most prefill_chunk tokens in all (a prompt's first piece
        always goes); sample the first token of each prompt completed."""
        pending = sorted((s for s in self._slot_seq if s is not None and not s.closed and s.prefilled < s.prompt_len),
                         key=lambda s: s.submitted)
        budget, work = self.settings.prefill_chunk, []
        for s in pending:
            n = min(self.settings.prefill_chunk, s.prompt_len - s.prefilled)
            if work and n > budget:
                break
            work.append((s, s.prefilled, s.req.prompt_ids[s.prefilled: s.prefilled + n]))
            budget -= n
        eng = self.engine
        # A graphed prefill replays one prompt per call; eager prefill batches prompts into few calls.
        groups = [[item] for item in work] if eng.prefill_graphed else self._prefill_groups(work)
        for group in groups:
            logits = eng.prefill([c for _, _, c in group], [s.slot for s, _, _ in group], [st for _, st, _ in group])
            done = []
            for row, (s, start, chunk) in enumerate(group):
                s.prefilled = start + len(chunk)
                if s.prefilled == s.prompt_len:
                    done.append((row, s))
            if not done:
                continue
            params = SamplingParams.build([s.req for _, s in done], len(done), eng.device)
            first = eng.sample(logits[[row for row, _ in done]], params,
                               torch.zeros(len(done), dtype=torch.int64, device=eng.device))
            slots = eng.to_device(torch.tensor([s.slot for _, s in done]))
            self._next_tokens.index_copy_(0, slots, first)
            for _, s in done:
                s.in_flight += 1
            self._queue_readback(first, [(s, i) for i, (_, s) in enumerate(done)])

    def _queue_readback(self, sampled: torch.Tensor, entries, decode_rows: int = 0) -> _Readback:
        if sampled.is_cuda:
            values = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            values.copy_(sampled, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            values, done = sampled, None
        readback = _Readback(values, done, entries, decode_rows)
        self._pending.append(readback)
        return readback

    def _read(self, readback: _Readback):
        if readback.done is not None:
            readback.done.synchronize()  # releases the GIL: delivery threads keep sending meanwhile
        values = readback.values.tolist()
        now = time.perf_counter()
        if readback.decode_rows:
            self.telemetry.post(StepRows(readback.decode_rows))
        for s, index in readback.entries:
            s.in_flight -= 1
            if not s.closed:  # cancelled meanwhile, or ended by an earlier token
                self._accept(s, values[index], now)

    def _accept(self, s: _Seq, token: int, now: float):
        """One sampled token of s: to its Finisher, then to its client."""
        if s.first_token_at is None:
            s.first_token_at = now
            self.telemetry.post(FirstToken(now - s.submitted))
        s.last_token_at = now
        ended = s.finisher.push(token)
        if ended:
            self._finish(s)
        elif s.req.stream:
            ids, text = s.finisher.stream_delta()
            if ids or text:
                s.outbox.put_tokens(ids, text)

    def _finish(self, s: _Seq):
        f = s.finisher
        if s.req.stream:
            ids, text = f.stream_delta()
        else:
            ids, text = list(f.ids), f.final_text()
        n = len(f.ids)
        with self._lock:
            s.closed = True
            s.outbox.close(Final(ids, text, s.prompt_len, n, f.reason))
            self._release_locked(s)
        per_token = (s.last_token_at - s.first_token_at) / (n - 1) if n > 1 else None
        self.telemetry.post(Completed(s.prompt_len, n, s.last_token_at - s.submitted, per_token))

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

    def _decode_params(self, key: tuple) -> SamplingParams:
        """Sampling settings per decode row, rebuilt only when the rows' sequences change."""
        if key != self._params_key:
            filler = GenerationRequest(prompt_ids=(0,), max_tokens=1)
            by_id = {s.id: s for s in self._slot_seq if s is not None}
            self._params = SamplingParams.build([by_id[k].req if k is not None else filler for k in key], len(key),
                                                self.engine.device)
            self._params_key = key
        return self._params

    def _report_occupancy(self):
        with self._lock:
            occupancy = (len(self._live) - len(self._waiting), len(self._waiting))
        if occupancy != self._occupancy:
            self._occupancy = occupancy
            self.telemetry.post(Occupancy(*occupancy, self.slots))
