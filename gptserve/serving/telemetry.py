"""Metric events leave the engine thread through a queue; one thread hands them to the observer.

Reporting a metric can be slow (in Triton's python backend every update is an IPC round trip to the server), so
the engine thread only enqueues. Occupancy is a gauge: only its latest value is reported.
"""
from __future__ import annotations

import logging
import queue
import threading

from .events import MetricEvent, Observer, Occupancy

log = logging.getLogger("gptserve")


class Telemetry:
    def __init__(self, observer: Observer | None):
        self._observer = observer
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gptserve-metrics", daemon=True)

    def start(self) -> "Telemetry":
        if self._observer is not None:
            self._thread.start()
        return self

    def post(self, event: MetricEvent):
        if self._observer is not None:
            self._queue.put(event)

    def stop(self, timeout: float = 10.0):
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self):
        while True:
            events = [self._queue.get()]
            while not self._queue.empty():
                events.append(self._queue.get_nowait())
            latest_occupancy = max((i for i, e in enumerate(events) if isinstance(e, Occupancy)), default=-1)
            for i, event in enumerate(events):
                if event is None:
                    return
                if isinstance(event, Occupancy) and i != latest_occupancy:
                    continue
                try:
                    self._observer.observe(event)
                except Exception:  # noqa: BLE001 - a metric must never take the model down
                    log.exception("metric update failed")
