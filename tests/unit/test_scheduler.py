"""The in-flight scheduler (gptserve.serving.scheduler) driven directly, with recording sinks (tiny preset, CPU).

Reference for every token: gptserve.serving.generate, the path gpt_large serves.
"""
import dataclasses
import functools
import threading
import time

import pytest

from gptserve.engine import Engine
from gptserve.serving import Failure, Final, GenerationRequest, Scheduler, Token, generate
from gptserve.serving.events import Completed, FirstToken, Occupancy, StepRows
from gptserve.serving.scheduler import MAX_CONSECUTIVE_FAILURES
from gptserve.settings import ServingConfig

PROMPT = (10, 20, 30, 40, 50, 60)


class Sink:
    def __init__(self):
        self.events = []
        self.times = []
        self.cancel = False
        self.done = threading.Event()
        self.first = threading.Event()

    def deliver(self, event):
        self.events.append(event)
        self.times.append(time.perf_counter())
        self.first.set()
        if isinstance(event, (Final, Failure)):
            self.done.set()

    def is_cancelled(self):
        return self.cancel

    def wait(self, timeout=30):
        assert self.done.wait(timeout), f"no final event after {timeout} s: {self.events[-3:]}"
        return self.events[-1]

    @property
    def tokens(self):
        return [e for e in self.events if isinstance(e, Token)]

    def ids(self) -> list[int]:
        """Every output id, across the token responses and the final one (each exactly once)."""
        return [i for e in self.events if isinstance(e, (Token, Final)) for i in e.ids]

    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, (Token, Final)))

    def count(self) -> int:
        return len(self.ids())


class Recorder:
    """An observer keeping every metric event."""

    def __init__(self):
        self.events = []

    def observe(self, event):
        self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


@functools.lru_cache(maxsize=None)
def engine_with(slots: int) -> Engine:
    return Engine(ServingConfig(preset="tiny", max_batch_size=slots), device="cpu")


@pytest.fixture
def make():
    started = []

    def make(observer=None, slots=16, engine=None, **settings):
        engine = engine or engine_with(slots)
        sched = Scheduler(lambda: engine, ServingConfig(**settings), observer).start(timeout=60)
        started.append(sched)
        return sched

    yield make
    for s in started:
        s.stop(drain_timeout=5)


def req(prompt=PROMPT, n=10, **kw):
    kw.setdefault("end_id", -1)
    return GenerationRequest(prompt_ids=tuple(prompt), max_tokens=n, **kw)


def run(sched, r):
    sink = Sink()
    assert sched.submit(r, sink)
    return sink


def reference(r):
    return generate(engine_with(16), [r])[0]


def wait_until(condition, timeout=10):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.001)


# -- tokens equal the non-streaming path's ----------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_greedy_alone_equals_generate(make, stream):
    sched = make()
    sink = run(sched, req(n=20, stream=stream))
    final = sink.wait()
    ref = reference(req(n=20))
    assert isinstance(final, Final)
    assert final.num_output_tokens == 20 and final.num_input_tokens == len(PROMPT)
    assert sink.ids() == ref.output_ids
    if stream:
        assert sink.tokens and sink.tokens[0].ids == ref.output_ids[:1]  # the first token goes alone, at once
    else:
        assert sink.tokens == [] and final.ids == ref.output_ids
        assert final.text == ref.text  # prompt + generated text, as gpt_large answers


@pytest.mark.parametrize("slots", [12, 40])
def test_slots_between_buckets_run_every_slot(make, slots):
    """12 (40) slots: the decode bucket is 16 (48) rows, past the last slot; every request still equals generate."""
    sched = make(slots=slots)
    prompts = [tuple(range(1 + i, 9 + 2 * i)) for i in range(slots)]
    sinks = [run(sched, req(p, n=6)) for p in prompts]
    assert [s.wait().ids for s in sinks] == [reference(req(p, n=6)).output_ids for p in prompts]


def test_stream_carries_every_token_once_in_order(make):
    sched = make()
    sink = run(sched, req(n=12, stream=True))
    final = sink.wait()
    ref = reference(req(n=12, exclude_input_in_output=True))
    assert all(isinstance(e, Token) and e.ids for e in sink.events[:-1])
    assert sink.ids() == ref.output_ids
    assert sink.text() == ref.text
    assert final.num_output_tokens == 12 and final.finish_reason == "length"


def test_join_mid_batch_and_chunked_prefill_equal_generate(make):
    """Newcomers (one with a prompt of 5 prefill chunks) join a running batch; every stream equals generate."""
    sched = make(prefill_chunk=64)
    long_prompt = tuple((i * 37) % 256 for i in range(300))
    first = run(sched, req(n=120, stream=True))
    wait_until(lambda: first.count() >= 5)
    joiners = [req(PROMPT, n=30), req(long_prompt, n=25), req((7,), n=40, temperature=0.9, seed=5, top_k=50)]
    sinks = [run(sched, r) for r in joiners]
    finals = [s.wait() for s in sinks]
    first.wait()
    assert first.ids() == reference(req(n=120)).output_ids
    for r, final in zip(joiners, finals):
        assert final.ids == reference(r).output_ids


def test_sampled_with_seed_equals_generate(make):
    sched = make()
    rs = [req(n=24, temperature=1.0, seed=s, top_p=0.9) for s in (1, 2, 3)]
    sinks = [run(sched, r) for r in rs]
    for r, s in zip(rs, sinks):
        assert s.wait().ids == reference(r).output_ids


def test_min_length_holds_the_end_id(make):
    sched = make()
    free = reference(req(n=12))
    end = free.output_ids[2]
    held = req(n=12, end_id=end, min_length=8)
    ref = reference(held)
    assert end not in ref.output_ids[:8]
    assert run(sched, held).wait().ids == ref.output_ids
    assert reference(req(n=12, end_id=end)).output_ids == free.output_ids[: free.output_ids.index(end)]


def test_end_id_stop_words_and_utf8_equal_generate(make):
    sched = make()
    # With random weights the tiny model repeats itself: "Hello world" -> "dddd...", the fox -> 5 x "x" then id 485,
    # the digits -> "99999999" then byte 241 (invalid UTF-8: held back while streaming, flushed by the final).
    end = req(b"The quick brown fox", n=16, end_id=485)
    stop = req(b"Hello world", n=16, stop_words=("ddd", "never"), exclude_input_in_output=True)
    utf8 = req(b"0123456789", n=16)
    assert reference(end).finish_reason == "end_id"
    assert reference(stop).finish_reason == "stop_word"
    for r in (end, stop, utf8):
        ref = reference(r)
        final = run(sched, r).wait()
        assert (final.ids, final.text, final.finish_reason) == (ref.output_ids, ref.text, ref.finish_reason)
        streamed = run(sched, dataclasses.replace(r, stream=True))
        sfinal = streamed.wait()
        assert streamed.ids() == ref.output_ids
        generated = reference(dataclasses.replace(r, exclude_input_in_output=True)).text
        assert streamed.text() == generated  # streams never echo the prompt
        assert sfinal.num_output_tokens == len(ref.output_ids)


def test_short_request_started_during_long_one_finishes_first(make):
    sched = make(step_delay_ms=2)
    long_sink = run(sched, req(n=300, stream=True))
    assert long_sink.first.wait(10)
    short_sink = run(sched, req((1, 2, 3), n=5, stream=True))
    short_sink.wait()
    assert not long_sink.done.is_set()
    long_sink.wait()


# -- delivery never holds up the engine --------------------------------------------------------------------------
class BlockedSink(Sink):
    """A client behind a slow IPC path: deliver() blocks until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def deliver(self, event):
        self.release.wait(30)
        super().deliver(event)


class SpyEngine:
    """An engine recording the scheduler's calls: ("prefill", [chunk lengths], starts, time) / ("decode", rows, time)."""

    def __init__(self, engine):
        self._e = engine
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._e, name)

    def prefill(self, prompts, slots, start=None):
        self.calls.append(("prefill", [len(p) for p in prompts], list(start or []), time.perf_counter()))
        return self._e.prefill(prompts, slots, start)

    def decode_step(self, tokens, positions, max_position=None):
        self.calls.append(("decode", tokens.shape[0], time.perf_counter()))
        return self._e.decode_step(tokens, positions, max_position)

    def decodes(self) -> int:
        return sum(c[0] == "decode" for c in self.calls)


def test_blocked_client_never_stops_the_engine_and_loses_no_token(make):
    spy = SpyEngine(engine_with(16))
    sched = make(engine=spy, step_delay_ms=1, delivery_threads=2)
    blocked = BlockedSink()
    assert sched.submit(req(n=80, stream=True), blocked)
    other = run(sched, req((1, 2, 3), n=30, stream=True))
    other.wait()  # the other client is served in full while the first one's delivery is stuck
    wait_until(lambda: spy.decodes() >= 60)  # ... and the engine keeps stepping for the stuck one too
    assert blocked.events == []
    blocked.release.set()
    final = blocked.wait()
    assert blocked.ids() == reference(req(n=80)).output_ids  # every token exactly once, in order
    assert final.num_output_tokens == 80
    assert len(blocked.events[1].ids) >= 40  # the tokens that piled up left together, not one response each


def test_stream_interval_sends_at_least_that_many_tokens(make):
    sched = make(stream_interval=4)
    sink = run(sched, req(n=21, stream=True))
    sink.wait()
    assert len(sink.tokens[0].ids) == 1  # the first token is never held
    assert all(len(e.ids) >= 4 for e in sink.tokens[1:])
    assert sink.ids() == reference(req(n=21)).output_ids


def test_long_prefill_mid_stream_does_not_stop_running_streams(make):
    """A 512-token prompt arriving mid-stream is prefilled in chunks between decode steps: the running stream
    receives tokens while it is being prefilled, long before the newcomer's first token."""
    spy = SpyEngine(engine_with(16))
    sched = make(engine=spy, prefill_chunk=64, step_delay_ms=2, stream_interval=1)  # a response per token
    running = run(sched, req(n=200, stream=True))
    wait_until(lambda: running.count() >= 3)
    spy.calls.clear()
    newcomer = run(sched, req(tuple(i % 256 for i in range(512)), n=3, stream=True))
    assert newcomer.first.wait(20)
    first_of_newcomer = newcomer.times[0]
    prefills = [c for c in spy.calls if c[0] == "prefill"]
    assert [c[1] for c in prefills] == [[64]] * 8 and [c[2][0] for c in prefills] == list(range(0, 512, 64))
    start, end = prefills[0][3], prefills[-1][3]
    during = [t for t in running.times if start < t < end]
    assert len(during) >= 4, "the running stream got no tokens while the newcomer was prefilled"
    steps = [c for c in spy.calls if c[0] == "decode" and start < c[2] < end]
    assert len(steps) >= 7  # a decode step between every two chunks
    assert first_of_newcomer > end
    newcomer.wait()
    running.wait()
    assert running.ids() == reference(req(n=200)).output_ids


# -- slots, cancellation, admission control ------------------------------------------------------------------------
def test_lowest_free_slot_keeps_decode_bucket_small_and_metrics(make):
    rec = Recorder()
    sched = make(observer=rec, step_delay_ms=1)
    a = run(sched, req(n=60))
    b = run(sched, req(n=4))
    b.wait()
    c = run(sched, req(n=4))  # reuses slot 1: the batch never needs more than 2 rows
    c.wait()
    a.wait()
    sched.stop()  # joins the engine thread, then flushes the metric events
    assert max(e.rows for e in rec.of(StepRows)) == 2
    occupancy = [(e.running, e.waiting) for e in rec.of(Occupancy)]
    assert occupancy[-1] == (0, 0) and (2, 0) in occupancy and all(e.slots == 16 for e in rec.of(Occupancy))
    done = rec.of(Completed)
    assert len(done) == 3 and len(rec.of(FirstToken)) == 3
    longest = max(done, key=lambda e: e.num_output_tokens)
    assert longest.num_output_tokens == 60 and 0 < longest.per_output_token < longest.seconds


def test_cancel_frees_slot_and_others_are_undisturbed(make):
    sched = make(slots=2, step_delay_ms=2, cancel_check_ms=5)
    keep = run(sched, req(n=200, stream=True))
    victim = run(sched, req((5, 6, 7), n=900, stream=True))
    queued = run(sched, req((9, 9), n=10))  # waits: both slots are busy
    assert victim.first.wait(10)
    time.sleep(0.05)
    assert not queued.done.is_set()
    victim.cancel = True
    t0 = time.perf_counter()
    failure = victim.wait(5)
    assert isinstance(failure, Failure) and failure.code == "CANCELLED"
    assert time.perf_counter() - t0 < 1.0
    assert victim.count() < 900
    assert isinstance(queued.wait(), Final)  # got the freed slot while `keep` still runs
    assert not keep.done.is_set()
    assert isinstance(keep.wait(), Final)
    assert queued.events[-1].ids == reference(req((9, 9), n=10)).output_ids
    assert keep.ids() == reference(req(n=200)).output_ids


def test_cancellation_is_checked_on_a_timer_not_per_token(make):
    sched = make(cancel_check_ms=50)
    sink = run(sched, req(n=300, stream=True))
    calls = []
    sink.is_cancelled = lambda: calls.append(time.perf_counter()) or False
    sink.wait()
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert len(calls) < sink.count() / 2 or not gaps or min(gaps) >= 0.04


def test_cancel_while_waiting(make):
    sched = make(slots=1, step_delay_ms=2, cancel_check_ms=5)
    busy = run(sched, req(n=200))
    waiting = run(sched, req(n=5))
    waiting.cancel = True
    assert waiting.wait(5).code == "CANCELLED"
    assert isinstance(busy.wait(), Final)


def test_wait_for_room_blocks_while_every_slot_is_spoken_for(make):
    sched = make(slots=2, step_delay_ms=2)
    assert sched.wait_for_room(timeout=1)
    a, b = run(sched, req(n=100)), run(sched, req(n=100))
    wait_until(lambda: sched.counts() == (2, 0))
    assert not sched.wait_for_room(timeout=0.05)  # both slots busy: an instance would take no more
    c = run(sched, req(n=3))
    assert sched.counts() == (2, 1)
    assert sched.wait_for_room(timeout=30)  # a slot frees up for c, then another one
    assert isinstance(c.wait(), Final)
    a.wait(), b.wait()


def test_requests_beyond_max_queue_size_are_refused_at_once(make):
    sched = make(slots=1, max_queue_size=2, step_delay_ms=2)
    busy = run(sched, req(n=200))
    wait_until(lambda: sched.counts() == (1, 0))
    queued = [run(sched, req(n=3)) for _ in range(2)]
    refused = Sink()
    assert not sched.submit(req(n=3), refused)
    failure = refused.wait(1)
    assert failure.code == "UNAVAILABLE" and "max_queue_size" in failure.message, failure
    assert sched.counts() == (1, 2)
    assert isinstance(busy.wait(), Final) and all(isinstance(q.wait(), Final) for q in queued)


def test_queue_timeout_is_unavailable(make):
    sched = make(slots=1, queue_timeout_ms=200, step_delay_ms=2)
    busy = run(sched, req(n=300))
    late = run(sched, req(n=5))
    failure = late.wait(5)
    assert failure.code == "UNAVAILABLE" and "queue_timeout_ms" in failure.message
    assert isinstance(busy.wait(), Final)


def test_stop_drains_running_and_refuses_new(make):
    sched = make(step_delay_ms=1)
    running = run(sched, req(n=50))
    time.sleep(0.02)
    sched.stop(drain_timeout=10)
    assert isinstance(running.wait(1), Final)
    late = Sink()
    assert not sched.submit(req(), late)
    assert late.wait(5).code == "UNAVAILABLE"
    assert not sched.alive


def test_stop_after_drain_timeout_fails_the_rest(make):
    sched = make(step_delay_ms=5)
    running = run(sched, req(n=900, stream=True))
    assert running.first.wait(10)
    t0 = time.perf_counter()
    sched.stop(drain_timeout=0.2)
    assert time.perf_counter() - t0 < 5
    assert running.wait(1).code == "UNAVAILABLE"


class _BrokenEngine:
    """The tiny engine whose decode step always fails."""

    def __init__(self, engine):
        self._e = engine

    def __getattr__(self, name):
        return getattr(self._e, name)

    def decode_step(self, *a):
        raise RuntimeError("boom")


def test_engine_failures_fail_requests_then_kill_thread(make):
    sched = make(engine=_BrokenEngine(engine_with(16)))
    codes = []
    for _ in range(MAX_CONSECUTIVE_FAILURES):
        failure = run(sched, req(n=5)).wait(5)
        assert isinstance(failure, Failure) and "boom" in failure.message
        codes.append(failure.code)
    # each failed step fails its request; the last one gives up the engine thread, which fails it UNAVAILABLE
    assert codes == ["INTERNAL"] * (MAX_CONSECUTIVE_FAILURES - 1) + ["UNAVAILABLE"]
    wait_until(lambda: not sched.alive, timeout=5)
    assert "boom" in sched.dead_reason
    refused = Sink()
    assert not sched.submit(req(), refused)
    assert refused.wait(5).code == "UNAVAILABLE"
    assert sched.wait_for_room(timeout=1)  # a dead engine never blocks execute()


def test_startup_error_is_raised():
    def factory():
        raise ValueError("no weights")

    with pytest.raises(ValueError, match="no weights"):
        Scheduler(factory, ServingConfig()).start(timeout=10)
