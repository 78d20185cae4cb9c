"""The deep health check, run as one long-lived `tools.health_check --watch` child (it imports tritonclient once,
so a check costs two one-token generations, not an interpreter start)."""
from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time

from supervisor.process import kill, spawn, wait_until

STALLED = "unhealthy: the health check printed nothing for too long"
STARTING = "not ready"  # tools.health_check's reason while the server (or a model) is still loading
STOP_S = 2.0


class HealthWatcher:
    """Yields the verdict lines of tools/health_check.py ("healthy: ...", "unhealthy: ...", "unreachable: ...")."""

    def __init__(self, python: str, url: str, models: list[str], interval: float, timeout: float, cwd: str,
                 enabled: bool = True):
        self.argv = [python, "-m", "tools.health_check", "--url", url, "--models", ",".join(models),
                     "--timeout", f"{timeout:g}", "--watch", f"{interval:g}"]
        self.cwd = cwd
        self.enabled = enabled  # disabled: start() runs nothing and next() only waits
        self.stall_s = interval + timeout + 5.0
        self.lines: queue.Queue = queue.Queue()
        self.process = None
        self.last_line_at = 0.0
        self.heard = False  # a verdict line came from this process: its SIGUSR1 handler is installed

    def start(self) -> None:
        if not self.enabled:
            return
        self.process = spawn(self.argv, cwd=self.cwd, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.last_line_at = time.monotonic()
        self.heard = False
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    @staticmethod
    def _read(process, lines: queue.Queue) -> None:
        for line in process.stdout:
            lines.put(line.strip())
        lines.put(None)  # the watcher exited

    def next(self, timeout: float) -> str | None:
        """The next verdict line within timeout s; "" if none yet; STALLED (and a restarted watcher) when it has
        been silent for too long; None when the watcher exited."""
        if not self.enabled:
            time.sleep(timeout)
            return ""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            if time.monotonic() - self.last_line_at < self.stall_s:
                return ""
            self.stop()
            self.start()
            return STALLED
        self.last_line_at = time.monotonic()
        self.heard = True
        return line

    def check_now(self) -> bool:
        """Ask for a check now instead of at the next interval (SIGUSR1); False if the watcher cannot take it yet."""
        if not self.heard or self.process is None or self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGUSR1)
        return True

    def stop(self) -> None:
        """SIGTERM: the check in progress (milliseconds when the server is well) ends before the process does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if wait_until(self.process, time.monotonic() + STOP_S) is None:
                kill(self.process)
        self.lines = queue.Queue()
