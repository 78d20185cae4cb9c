"""Responses leave from their own threads, so the engine never waits for a client or an IPC round trip.

The engine thread appends to a request's Outbox and returns at once. A few delivery threads send what has
accumulated: while a sink is slow (a response is one blocking IPC round trip in Triton's python backend), the
tokens that pile up leave together in its next response. A request's outbox is handled by one thread at a time,
so its responses keep their order and carry every token exactly once.
"""
from __future__ import annotations

import logging
import queue
import threading

from .events import Failure, Final, Response, Sink, Token

log = logging.getLogger("gptserve")


class Outbox:
    """One request's pending responses. put_tokens/close: any thread, never blocking."""

    __slots__ = ("sink", "_delivery", "_lock", "_ids", "_text", "_last", "_scheduled", "_sent_any", "broken")

    def __init__(self, sink: Sink, delivery: "Delivery"):
        self.sink = sink
        self._delivery = delivery
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._text = ""
        self._last: Final | Failure | None = None
        self._scheduled = False  # queued for, or in the hands of, a delivery thread
        self._sent_any = False
        self.broken = False  # the sink failed: the request should be given up

    def put_tokens(self, ids: list[int], text: str):
        with self._lock:
            self._ids.extend(ids)
            self._text += text
            ready = not self._sent_any or len(self._ids) >= self._delivery.interval  # first token: at once
            self._schedule_locked(ready)

    def close(self, last: Final | Failure):
        with self._lock:
            self._last = last
            self._schedule_locked(True)

    def _schedule_locked(self, ready: bool):
        if ready and not self._scheduled:
            self._scheduled = True
            self._delivery.ready.put(self)

    def take(self) -> list[Response]:
        """What to send now, in order; [] when nothing is pending (the outbox is then no longer scheduled)."""
        with self._lock:
            ids, text, last = self._ids, self._text, self._last
            self._ids, self._text, self._last = [], "", None
            if not ids and not text and last is None:
                self._scheduled = False
                return []
            self._sent_any = True
        if isinstance(last, Final):  # the pending tokens ride along in the final response
            return [Final(ids + last.ids, text + last.text, last.num_input_tokens, last.num_output_tokens,
                          last.finish_reason)]
        tokens = [Token(ids, text)] if ids or text else []
        return tokens + ([last] if last is not None else [])


class Delivery:
    def __init__(self, threads: int, interval: int):
        self.interval = interval
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"gptserve-delivery-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "Delivery":
        for t in self._threads:
            t.start()
        return self

    def open(self, sink: Sink) -> Outbox:
        return Outbox(sink, self)

    def stop(self, timeout: float = 30.0):
        """Send everything already handed over, then end the threads."""
        for _ in self._threads:
            self.ready.put(None)
        for t in self._threads:
            t.join(timeout)

    def _work(self):
        while True:
            outbox = self.ready.get()
            if outbox is None:
                return
            while responses := outbox.take():
                for response in responses:
                    if outbox.broken:
                        break
                    try:
                        outbox.sink.deliver(response)
                    except Exception:  # noqa: BLE001 - one client's failure must not stop the others
                        log.exception("delivery to a client failed; giving the request up")
                        outbox.broken = True
