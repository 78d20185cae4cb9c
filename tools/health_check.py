#!/usr/bin/env python3
"""Deep health check of a running server: the ready endpoint plus one tiny generation per model, within a deadline.

The ready endpoints of Triton 2.51 keep answering 200 after a model's stub process died; a generation does not.
This is the command of the Docker HEALTHCHECK, the Kubernetes liveness probe and the supervisor
(scripts/supervise.py runs it with --watch):

    python3 -m tools.health_check --url 127.0.0.1:8001 --timeout 10

Without --url: HOST (default 127.0.0.1; 0.0.0.0 means this machine) and GRPC_PORT (default 8001).
Exit status: 0 healthy, 1 unhealthy (not ready, or a generation failed or missed the deadline), 2 unreachable.
A model that answers UNAVAILABLE because it is busy (queue full, queue wait timeout) counts as healthy: overload is
not a reason to restart a server. One line per check on stdout: "healthy: ...", "unhealthy: ..." or "unreachable: ...".
"""
from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2
VERDICTS = {HEALTHY: "healthy", UNHEALTHY: "unhealthy", UNREACHABLE: "unreachable"}
DEFAULT_MODELS = "gpt_large,gpt_large_stream"
PROMPT_ID = 72  # one token of any vocabulary the models accept (byte-level 'H')
# Messages of an UNAVAILABLE answer that mean "busy", not "broken" (Triton's queue policy, the stream scheduler).
BUSY_MARKERS = ("server busy", "maximum queue size", "timeout expired")
NOT_READY = "not ready"  # ends the reason of a check that failed only because the server is still starting


class Unhealthy(Exception):
    """A check failed; the message says which and why."""


def default_url() -> str:
    host = os.environ.get("HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{host}:{os.environ.get('GRPC_PORT') or 8001}"


def request_inputs(decoupled: bool) -> list:
    fields = {"input_ids": np.array([[PROMPT_ID]], dtype=np.int32), "max_tokens": np.array([[1]], dtype=np.int32)}
    if decoupled:
        fields["stream"] = np.array([[False]], dtype=bool)
    types = {np.dtype(np.int32): "INT32", np.dtype(bool): "BOOL"}
    inputs = []
    for name, value in fields.items():
        tensor = grpcclient.InferInput(name, list(value.shape), types[value.dtype])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def describe(error: InferenceServerException) -> str:
    return f"{error.status()} {error.message()}" if error.status() else error.message()


def is_busy(error: InferenceServerException) -> bool:
    """UNAVAILABLE for being busy. An error on a gRPC stream (the stream model's) carries no status code."""
    status = error.status()
    return (not status or "UNAVAILABLE" in str(status)) and any(m in error.message().lower() for m in BUSY_MARKERS)


def generate_unary(client, model: str, timeout: float) -> None:
    client.infer(model, request_inputs(False), outputs=[grpcclient.InferRequestedOutput("num_output_tokens")],
                 client_timeout=timeout)


def generate_streamed(client, model: str, timeout: float) -> None:
    """A decoupled model answers on a gRPC stream: wait for its final response or an error."""
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=timeout)
    try:
        client.async_stream_infer(model, request_inputs(True),
                                  outputs=[grpcclient.InferRequestedOutput("num_output_tokens")],
                                  enable_empty_final_response=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                result, error = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Unhealthy(f"{model}: no final response within {timeout:.1f} s") from None
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
    finally:
        client.stop_stream(cancel_requests=True)


def check_model(client, model: str, timeout: float) -> str:
    """One generation of one token; returns a short note, raises Unhealthy."""
    if not client.is_model_ready(model, client_timeout=timeout):
        raise Unhealthy(f"{model}: {NOT_READY}")
    config = client.get_model_config(model, client_timeout=timeout).config
    generate = generate_streamed if config.model_transaction_policy.decoupled else generate_unary
    started = time.monotonic()
    try:
        generate(client, model, timeout)
    except InferenceServerException as exc:
        if is_busy(exc):
            return f"{model} busy"
        raise Unhealthy(f"{model}: {describe(exc)}") from None
    return f"{model} {1000 * (time.monotonic() - started):.0f} ms"


def check(url: str, models: list[str], timeout: float) -> tuple[int, str]:
    """(HEALTHY/UNHEALTHY/UNREACHABLE, reason) of one check against the gRPC endpoint at url."""
    deadline = time.monotonic() + timeout
    remaining = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            live = client.is_server_live(client_timeout=remaining())
        except InferenceServerException as exc:
            return UNREACHABLE, f"{url}: {exc.message()}"
        if not live or not client.is_server_ready(client_timeout=remaining()):
            return UNHEALTHY, f"{url}: server {NOT_READY}"
        notes = [check_model(client, model, remaining()) for model in models]
        return HEALTHY, ", ".join(notes)
    except Unhealthy as exc:
        return UNHEALTHY, str(exc)
    except InferenceServerException as exc:
        return UNHEALTHY, describe(exc)
    finally:
        client.close()


def report(status: int, reason: str) -> None:
    print(f"{VERDICTS[status]}: {reason}", flush=True)


def watch(url: str, models: list[str], timeout: float, interval: float) -> None:
    """Check every `interval` s while healthy, every second while not (so a failure is confirmed fast), and at once
    on SIGUSR1 (the supervisor saw a stub exit), until SIGTERM, which lets the check in progress finish: a client
    that drops a gRPC stream mid-request keeps Triton 2.51 from unloading the stream model at shutdown."""
    stop, wake = threading.Event(), threading.Event()

    def on_stop(*_):
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, lambda *_: wake.set())
    while not stop.is_set():
        status, reason = check(url, models, timeout)
        report(status, reason)
        wake.wait(interval if status == HEALTHY else min(1.0, interval))
        wake.clear()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="health_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="gRPC host:port (default HOST:GRPC_PORT, 127.0.0.1:8001)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of the whole check in s (default 10)")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="check again every SECONDS, one line each, until killed (used by the supervisor)")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.watch < 0:
        parser.error("--timeout must be > 0 and --watch >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    url = args.url or default_url()
    models = [m for m in args.models.split(",") if m]
    if args.watch:
        watch(url, models, args.timeout, args.watch)
    status, reason = check(url, models, args.timeout)
    report(status, reason)
    return status


if __name__ == "__main__":
    sys.exit(main())
