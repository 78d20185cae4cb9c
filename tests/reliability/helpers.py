"""Helpers of the reliability suite: servers, clients and process probes."""
from __future__ import annotations

import queue
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.integration.triton_server import REPO_ROOT, TritonServer, make_inputs

PLAIN, STREAM = "gpt_large", "gpt_large_stream"
ADMIN_KEY = "reliability-suite-admin-key-0123456789"
SLOTS, QUEUE, STEP_MS = 4, 2, 20  # small stream model: overload and cancellation are quick to provoke
STARTUP_S = 240


HEALTH_INTERVAL_S = 5  # serve.sh's default: the reliability servers run as `make serve` does


def start_server(repo=REPO_ROOT / "model_repository", **kwargs) -> TritonServer:
    return TritonServer(repo, startup_timeout=STARTUP_S, health_interval=HEALTH_INTERVAL_S, **kwargs).start()


def inputs(**fields):
    return make_inputs(grpcclient, **fields)


def health_check(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    """tools/health_check.py as the Docker HEALTHCHECK runs it."""
    return subprocess.run([sys.executable, "-m", "tools.health_check", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def shm_regions(pid: int) -> set[str]:
    """The python backend's /dev/shm regions mapped by process pid."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return set(re.findall(r"/dev/shm/triton_python_backend_shm_region_[0-9A-Za-z_-]+", maps))


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


class Stream:
    """One gRPC stream client of the stream model; events are (result, error) pairs."""

    def __init__(self, server: TritonServer):
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.events: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.events.put((result, error)))

    def send(self, request_id: str = "r", **fields) -> None:
        self.client.async_stream_infer(STREAM, inputs(**fields), request_id=request_id,
                                       enable_empty_final_response=True)

    def until_final(self, timeout: float = 60.0):
        """Every event up to the final response or the first error; raises queue.Empty on timeout."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            result, error = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            got.append((result, error))
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                return got

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def generate(server: TritonServer, model: str = PLAIN, **fields) -> np.ndarray:
    """output_ids of one gpt_large request (gRPC unary)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.infer(model, inputs(**fields), client_timeout=60).as_numpy("output_ids")
    finally:
        client.close()
