"""The in-flight scheduler (gptserve.scheduler) driven directly, with fake response sinks (tiny preset, CPU).

Reference for every token: Engine.generate, the path gpt_large serves.
"""
import dataclasses
import threading
import time

import pytest

from gptserve import GenerationRequest
from gptserve.scheduler import (MAX_CONSECUTIVE_FAILURES, Failure, Final, Observer, Scheduler, SchedulerConfig,
                                 Token)

PROMPT = (10, 20, 30, 40, 50, 60)


class Sink:
    def __init__(self):
        self.events = []
        self.cancel = False
        self.done = threading.Event()
        self.first = threading.Event()

    def deliver(self, event):
        self.events.append(event)
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


class Recorder(Observer):
    def __init__(self):
        self.batches, self.ttft, self.successes, self.failures, self.gauge_values = [], [], [], [], []

    def batch(self, rows):
        self.batches.append(rows)

    def first_token(self, seconds):
        self.ttft.append(seconds)

    def success(self, n_in, n_out, seconds, tpot):
        self.successes.append((n_in, n_out, seconds, tpot))

    def failure(self, code):
        self.failures.append(code)

    def gauges(self, in_flight, waiting):
        self.gauge_values.append((in_flight, waiting))


@pytest.fixture
def make(tiny_engine):
    started = []

    def make(observer=None, **kw):
        sched = Scheduler(lambda: tiny_engine, SchedulerConfig(**kw), observer).start(timeout=60)
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


def reference(engine, r):
    return engine.generate([r])[0]


# -- tokens equal the non-streaming engine's ------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_greedy_alone_equals_generate(make, tiny_engine, stream):
    sched = make()
    r = req(n=20, stream=stream)
    sink = run(sched, r)
    final = sink.wait()
    ref = reference(tiny_engine, req(n=20))
    assert isinstance(final, Final)
    assert final.num_output_tokens == 20 and final.num_input_tokens == len(PROMPT)
    if stream:  # one token per event, then a final without ids
        assert all(len(e.ids) == 1 for e in sink.tokens)
        assert [e.ids[0] for e in sink.tokens] == ref.output_ids
        assert final.ids == []
    else:
        assert sink.tokens == []
        assert final.ids == ref.output_ids
        assert final.text == ref.text  # prompt + generated text, as gpt_large answers


def test_stream_is_n_tokens_then_one_final(make, tiny_engine):
    sched = make()
    sink = run(sched, req(n=12, stream=True))
    final = sink.wait()
    ref = reference(tiny_engine, req(n=12, exclude_input_in_output=True))
    assert len(sink.events) == 12 + 1
    assert all(isinstance(e, Token) and len(e.ids) == 1 for e in sink.events[:-1])
    assert [e.ids[0] for e in sink.tokens] == ref.output_ids
    assert "".join(e.text for e in sink.tokens) + final.text == ref.text
    assert final.ids == [] and final.num_output_tokens == 12 and final.finish_reason == "length"


def test_join_mid_batch_and_chunked_prefill_equal_generate(make, tiny_engine):
    """Newcomers (one with a prompt of 5 prefill chunks) join a running batch; every stream equals generate."""
    sched = make(prefill_chunk=64)
    long_prompt = tuple((i * 37) % 256 for i in range(300))
    first = run(sched, req(n=120, stream=True))
    assert first.first.wait(10)
    while len(first.events) < 5:
        time.sleep(0.001)
    joiners = [req(PROMPT, n=30), req(long_prompt, n=25), req((7,), n=40, temperature=0.9, seed=5, top_k=50)]
    sinks = [run(sched, r) for r in joiners]
    finals = [s.wait() for s in sinks]
    first_final = first.wait()
    assert [e.ids[0] for e in first.tokens] == reference(tiny_engine, req(n=120)).output_ids
    assert first_final.num_output_tokens == 120
    for r, final in zip(joiners, finals):
        assert final.ids == reference(tiny_engine, r).output_ids


def test_sampled_with_seed_equals_generate(make, tiny_engine):
    sched = make()
    rs = [req(n=24, temperature=1.0, seed=s, top_p=0.9) for s in (1, 2, 3)]
    sinks = [run(sched, r) for r in rs]
    for r, s in zip(rs, sinks):
        assert s.wait().ids == reference(tiny_engine, r).output_ids


def test_end_id_stop_words_and_utf8_equal_generate(make, tiny_engine):
    sched = make()
    # With random weights the tiny model repeats itself: "Hello world" -> "dddd...", the fox -> 5 x "x" then id 485,
    # the digits -> "99999999" then byte 241 (invalid UTF-8: held back while streaming, flushed by the final).
    end = req(b"The quick brown fox", n=16, end_id=485)
    stop = req(b"Hello world", n=16, stop_words=("ddd", "never"), exclude_input_in_output=True)
    utf8 = req(b"0123456789", n=16)
    assert reference(tiny_engine, end).finish_reason == "end_id"
    assert reference(tiny_engine, stop).finish_reason == "stop_word"
    for r in (end, stop, utf8):
        ref = reference(tiny_engine, r)
        final = run(sched, r).wait()
        assert (final.ids, final.text, final.finish_reason) == (ref.output_ids, ref.text, ref.finish_reason)
        streamed = run(sched, dataclasses.replace(r, stream=True))
        sfinal = streamed.wait()
        assert [e.ids[0] for e in streamed.tokens] == ref.output_ids
        generated = reference(tiny_engine, dataclasses.replace(r, exclude_input_in_output=True)).text
        assert "".join(e.text for e in streamed.tokens) + sfinal.text == generated  # streams never echo the prompt
        assert sfinal.num_output_tokens == len(ref.output_ids)


def test_short_request_started_during_long_one_finishes_first(make):
    sched = make(step_delay_s=0.002)
    order = []
    long_sink, short_sink = Sink(), Sink()
    long_sink.deliver = _tap(long_sink.deliver, order, "long")
    short_sink.deliver = _tap(short_sink.deliver, order, "short")
    sched.submit(req(n=300, stream=True), long_sink)
    assert long_sink.first.wait(10)
    sched.submit(req((1, 2, 3), n=5, stream=True), short_sink)
    short_sink.wait()
    long_sink.wait()
    assert order == ["short", "long"]


def _tap(deliver, order, name):
    def tapped(event):
        if isinstance(event, (Final, Failure)):
            order.append(name)
        deliver(event)
    return tapped


# -- slots, cancellation, admission control --------------------------------------------------------------------
def test_lowest_free_slot_keeps_decode_bucket_small(make):
    rec = Recorder()
    sched = make(observer=rec, step_delay_s=0.001)
    a = run(sched, req(n=60))
    b = run(sched, req(n=4))
    b.wait()
    c = run(sched, req(n=4))  # reuses slot 1: the batch never needs more than 2 rows
    c.wait()
    a.wait()
    assert max(rec.batches) == 2
    deadline = time.time() + 2  # the gauges follow the final event
    while rec.gauge_values[-1] != (0, 0) and time.time() < deadline:
        time.sleep(0.01)
    assert rec.gauge_values[-1] == (0, 0)
    assert (1, 0) in rec.gauge_values and (2, 0) in rec.gauge_values
    assert len(rec.successes) == 3 and len(rec.ttft) == 3
    n_in, n_out, seconds, tpot = rec.successes[-1]
    assert n_out == 60 and tpot is not None and 0 < tpot < seconds


def test_cancel_frees_slot_and_others_are_undisturbed(make, tiny_engine):
    sched = make(max_slots=2, step_delay_s=0.002)
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
    assert len(victim.tokens) < 900
    assert isinstance(queued.wait(), Final)  # got the freed slot while `keep` still runs
    assert not keep.done.is_set()
    assert isinstance(keep.wait(), Final)
    # (the engine is shared with the scheduler thread: reference runs only once the scheduler is idle)
    assert queued.events[-1].ids == reference(tiny_engine, req((9, 9), n=10)).output_ids
    assert [e.ids[0] for e in keep.tokens] == reference(tiny_engine, req(n=200)).output_ids


def test_cancel_while_waiting(make):
    sched = make(max_slots=1, step_delay_s=0.002)
    busy = run(sched, req(n=200))
    waiting = run(sched, req(n=5))
    waiting.cancel = True
    assert waiting.wait(5).code == "CANCELLED"
    assert isinstance(busy.wait(), Final)


def test_burst_beyond_queue_bound_gets_unavailable(make):
    sched = make(max_slots=2, max_queue_size=2, step_delay_s=0.001)
    sinks = [Sink() for _ in range(7)]
    accepted = [sched.submit(req(n=30), s) for s in sinks]
    assert accepted == [True] * 4 + [False] * 3  # 2 slots + 2 waiting
    results = [s.wait() for s in sinks]
    assert all(isinstance(r, Final) for r in results[:4])
    assert all(r.code == "UNAVAILABLE" and "max_queue_size=2" in r.message for r in results[4:])


def test_queue_timeout_is_unavailable(make):
    sched = make(max_slots=1, queue_timeout_s=0.2, step_delay_s=0.002)
    busy = run(sched, req(n=300))
    late = run(sched, req(n=5))
    failure = late.wait(5)
    assert failure.code == "UNAVAILABLE" and "queue_timeout_ms=200" in failure.message
    assert isinstance(busy.wait(), Final)


def test_stop_drains_running_and_refuses_new(make):
    sched = make(step_delay_s=0.001)
    running = run(sched, req(n=50))
    time.sleep(0.02)
    sched.stop(drain_timeout=10)
    assert isinstance(running.wait(1), Final)
    late = Sink()
    assert not sched.submit(req(), late)
    assert late.wait(5).code == "UNAVAILABLE"
    assert not sched.alive


def test_stop_after_drain_timeout_fails_the_rest(make):
    sched = make(step_delay_s=0.005)
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


def test_engine_failures_fail_requests_then_kill_thread(tiny_engine):
    sched = Scheduler(lambda: _BrokenEngine(tiny_engine), SchedulerConfig()).start(timeout=60)
    try:
        codes = []
        for _ in range(MAX_CONSECUTIVE_FAILURES):
            failure = run(sched, req(n=5)).wait(5)
            assert isinstance(failure, Failure) and "boom" in failure.message
            codes.append(failure.code)
        # each failed step fails its request; the last one gives up the engine thread, which fails it UNAVAILABLE
        assert codes == ["INTERNAL"] * (MAX_CONSECUTIVE_FAILURES - 1) + ["UNAVAILABLE"]
        deadline = time.time() + 5
        while sched.alive and time.time() < deadline:
            time.sleep(0.01)
        assert not sched.alive and "boom" in sched.dead_reason
        refused = Sink()
        assert not sched.submit(req(), refused)
        assert refused.wait(5).code == "UNAVAILABLE"
    finally:
        sched.stop(drain_timeout=1)


def test_startup_error_is_raised():
    def factory():
        raise ValueError("no weights")

    with pytest.raises(ValueError, match="no weights"):
        Scheduler(factory).start(timeout=10)


class _SpyEngine:
    """The tiny engine, recording the scheduler's calls: ("prefill", [chunk lengths], starts) / ("decode", rows)."""

    def __init__(self, engine):
        self._e = engine
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._e, name)

    def prefill(self, prompts, slots, start=None):
        self.calls.append(("prefill", [len(p) for p in prompts], list(start or [])))
        return self._e.prefill(prompts, slots, start)

    def decode_step(self, tokens, positions, max_position=None):
        self.calls.append(("decode", tokens.shape[0]))
        return self._e.decode_step(tokens, positions, max_position)


def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_engine):
    spy = _SpyEngine(tiny_engine)
    sched = Scheduler(lambda: spy, SchedulerConfig(prefill_chunk=64, step_delay_s=0.001)).start(timeout=60)
    try:
        running = run(sched, req(n=100, stream=True))
        assert running.first.wait(10)
        newcomer = run(sched, req(tuple(i % 256 for i in range(300)), n=3))
        newcomer.wait()
        running.wait()
    finally:
        sched.stop(drain_timeout=1)
    first = spy.calls.index(("prefill", [6], [0]))
    joined = spy.calls[first + 1:]
    prefills = [c for c in joined if c[0] == "prefill"]
    assert [c[1] for c in prefills] == [[64]] * 4 + [[44]]  # 300 tokens in 5 chunks ...
    assert [c[2] for c in prefills] == [[0], [64], [128], [192], [256]]
    for a, b in zip(joined, joined[1:]):  # ... each followed by a decode step of the running sequence
        assert not (a[0] == "prefill" and b[0] == "prefill")
    assert ("decode", 2) in joined
