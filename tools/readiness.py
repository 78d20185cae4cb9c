"""The wait for a live server and a READY model, visible while it lasts.

On a terminal one line is rewritten in place; otherwise (logs, CI, `make release-check` piped) a line is printed
every few seconds, so a wait is never silent. A timeout ends with one line naming the address and the last
reason the server was not ready.
"""
from __future__ import annotations

import sys
import time
from typing import NamedTuple

from tools.cli import ToolError, stderr_is_tty
from tools.client import (close_client, decoupled_from_config, make_client, max_batch_size_from_config, model_config,
                          one_line)

LOG_EVERY_S = 5.0  # when stderr is not a terminal


class WaitDisplay:
    """'<prog>: waiting for READY at <addr> (n s of m): <reason>' on stderr."""

    def __init__(self, prog: str, url: str, timeout: float, tty: bool):
        self.prog, self.url, self.timeout, self.tty = prog, url, timeout, tty
        self.shown = False
        self.next_log = 0.0

    def update(self, waited: float, reason: str) -> None:
        line = f"{self.prog}: waiting for READY at {self.url} ({waited:.0f} s of {self.timeout:g}): {reason}"
        if self.tty:
            print("\r\033[K" + line, end="", file=sys.stderr, flush=True)  # \033[K: erase the previous text
        elif waited >= self.next_log:
            print(line, file=sys.stderr, flush=True)
            self.next_log = waited + LOG_EVERY_S
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            print(file=sys.stderr, flush=True)


def wait_until_ready(client, model: str, url: str, timeout: float, prog: str, poll: float = 0.5) -> float:
    """Wait until the server is live and `model` is ready; seconds waited. ToolError on timeout."""
    t0 = time.monotonic()
    display = WaitDisplay(prog, url, timeout, stderr_is_tty())
    try:
        while True:
            try:
                if client.is_server_live() and client.is_model_ready(model):
                    return time.monotonic() - t0
                reason = f"server live, model {model!r} not ready (is it loaded?)"
            except Exception as exc:  # connection refused while the server starts, etc.
                reason = one_line(exc)
            waited = time.monotonic() - t0
            if waited >= timeout:
                raise ToolError(f"server at {url} not ready after {timeout:g} s: {reason}")
            display.update(waited, reason)
            time.sleep(min(poll, max(0.0, timeout - waited)))
    finally:
        display.close()


class ReadyModel(NamedTuple):
    waited_s: float
    decoupled: bool  # streams (gRPC only)
    max_batch_size: int  # Triton's field: requests per batch, or sequences generated together; 0: no batching


def await_model(protocol: str, url: str, model: str, timeout: float, prog: str) -> ReadyModel:
    """Wait for `model` to be READY, then read what its configuration says."""
    client = make_client(protocol, url)
    try:
        waited = wait_until_ready(client, model, url, timeout, prog)
        try:
            config = model_config(client, model)
            return ReadyModel(waited, decoupled_from_config(config), max_batch_size_from_config(config))
        except Exception as exc:
            raise ToolError(f"cannot read the configuration of {model!r} at {url}: {one_line(exc)}") from None
    finally:
        close_client(client)
