"""Whether the client kept up: a load test on a busy host can fail because the client, not the server, was slow.

A client that falls behind sends late (charged to latency by the open-loop test) or burns its CPU; both are
measured over the run and said next to the verdict.
"""
from __future__ import annotations

import os
import time
from typing import Optional

try:
    import psutil  # host-wide CPU, when present (Locust depends on it)
except ImportError:
    psutil = None

BUSY = 0.9  # a fraction of the window above which the CPU is called saturated


class ClientMeter:
    """CPU used over a window: this process, the calling thread (the tool's event loop) and the whole host.

    start() and stop() must be called from the same thread."""

    def start(self) -> None:
        self._wall, self._proc, self._thread = time.perf_counter(), time.process_time(), time.thread_time()
        if psutil is not None:
            psutil.cpu_percent(interval=None)  # starts psutil's window: the next call reports since this one

    def stop(self) -> dict:
        wall = time.perf_counter() - self._wall
        proc, thread = time.process_time() - self._proc, time.thread_time() - self._thread
        host_busy = psutil.cpu_percent(interval=None) / 100.0 if psutil is not None else None
        return {"wall_s": wall, "process_cpu_s": proc, "process_cpu_cores": proc / wall if wall else None,
                "loop_thread_busy": thread / wall if wall else None, "host_cpu_busy": host_busy,
                "host_cpus": os.cpu_count()}


def client_notes(load: dict, late: int, sent: int, late_threshold_ms: float, max_lag_ms: Optional[float]) -> list:
    """What to say next to the verdict about the client: late sends, its saturated loop, a saturated host."""
    notes = []
    if late:
        notes.append(f"client fell behind its schedule: {late} of {sent} sends started more than "
                     f"{late_threshold_ms:g} ms late (max {max_lag_ms or 0:.0f} ms), so the offered load was lower "
                     "than asked and those latencies include the client's delay")
    if (load.get("loop_thread_busy") or 0) >= BUSY:
        notes.append(f"client CPU saturated: its event loop was busy {load['loop_thread_busy']:.0%} of the run")
    if (load.get("host_cpu_busy") or 0) >= BUSY:
        notes.append(f"host CPU {load['host_cpu_busy']:.0%} busy during the run ({load['host_cpus']} CPUs, "
                     "shared by the client and anything else on this machine)")
    return notes
