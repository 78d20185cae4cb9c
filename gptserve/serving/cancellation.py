"""Cancellation checked on a timer, on its own thread: asking a Triton request whether its client cancelled is
an IPC round trip, too costly to do for every token of every sequence."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("gptserve")


class CancelWatch:
    def __init__(self, period_s: float, live: Callable[[], list], on_cancel: Callable[[object], None]):
        """live() returns the sequences to check (each has .outbox.sink); on_cancel(seq) is called once for each
        sequence whose client cancelled."""
        self._period = period_s
        self._live = live
        self._on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptserve-cancel", daemon=True)

    def start(self) -> "CancelWatch":
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        while not self._stop.wait(self._period):
            for seq in self._live():
                try:
                    cancelled = seq.outbox.sink.is_cancelled()
                except Exception:  # noqa: BLE001
                    log.exception("is_cancelled failed")
                    continue
                if cancelled:
                    self._on_cancel(seq)
