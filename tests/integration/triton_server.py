"""Start a real tritonserver (from the nvidia-pytriton wheel) for integration tests.

The server is launched through ``scripts/serve.sh`` -- the same script ``make serve`` uses -- which ``exec``s
``scripts/supervise.py``: the Popen PID is the supervisor (tritonserver, Caddy in front of its HTTP and metrics
endpoints, and the health check are its children), and SIGTERM to it stops the whole server.
``GPTSERVE_SERVE_SH=<path>`` starts servers through another checkout's serve.sh instead (to show that a test fails
on an older commit).

    with TritonServer("model_repository", env={"MODEL_PATH": str(ckpt)}, models=["gpt_large"]) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        ...
        assert "nv_inference_request_success" in server.metrics()
    # leaving the block sends SIGTERM; or call server.stop() yourself to get the exit code
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_SH = Path(os.environ.get("GPTSERVE_SERVE_SH") or REPO_ROOT / "scripts" / "serve.sh")
SETUP_TRITON_SH = REPO_ROOT / "scripts" / "setup_triton.sh"

_LOG_TAIL_CHARS = 20_000
_PORT_RETRIES = 3

_live_servers: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()
_setup_lock = threading.Lock()
_setup_done: set = set()


class TritonServerError(RuntimeError):
    """tritonserver failed to start, died, or did not become ready in time (message carries the log tail)."""


def free_ports(n: int = 3) -> list[int]:
    """Return n distinct currently-free TCP ports (bound together on 127.0.0.1:0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ensure_triton_setup(python: Optional[str] = None) -> None:
    """Run scripts/setup_triton.sh once per process and interpreter (idempotent and cheap)."""
    python = python or os.environ.get("VENV_PYTHON") or sys.executable
    with _setup_lock:
        if python in _setup_done:
            return
        proc = subprocess.run(
            ["bash", str(SETUP_TRITON_SH), python], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise TritonServerError(
                f"scripts/setup_triton.sh failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        _setup_done.add(python)


class TritonServer:
    """A tritonserver subprocess on free ports, serving ``model_repository``.

    Args:
        model_repository: path of the model repository (``--model-repository``).
        models: ``None`` (default): Triton's default model-control mode "none" -- every model in the
            repository is loaded at start-up, no polling. A list: ``--model-control-mode=explicit`` plus
            ``--load-model NAME`` for each name (an empty list starts with nothing loaded).
        env: extra environment variables for the server and its python-backend stubs (e.g. ``MODEL_PATH``).
        extra_args: extra tritonserver command-line arguments.
        startup_timeout: seconds to wait for ``/v2/health/ready`` and the metrics endpoint (default 300).
        health_interval: seconds between the supervisor's deep health checks (serve.sh's HEALTH_INTERVAL). 0, the
            default here, turns them off: each check is one request per model, which tests that count requests
            in Triton's counters would see.

    The three endpoints bind to ``host`` (127.0.0.1, the HOST variable of serve.sh); the server's stdout+stderr go
    to a new temp file (``log_path``), kept after stop.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        model_repository: "str | os.PathLike[str]",
        *,
        models: Optional[Iterable[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 300.0,
        health_interval: float = 0.0,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = None if models is None else list(models)
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.extra_args = list(extra_args)
        self.startup_timeout = float(startup_timeout)
        self.health_interval = float(health_interval)
        fd, log_path = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._clients: list = []
        self._log_offset = 0

    # ------------------------------------------------------------------ addresses
    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as tritonclient.http expects."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as tritonclient.grpc expects."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        """The command line (serve.sh adds repository, backend dir, addresses, ports and the rest)."""
        args = ["bash", str(SERVE_SH)]
        if self.models is not None:
            args.append("--model-control-mode=explicit")
            args += [f"--load-model={m}" for m in self.models]
        return args + self.extra_args

    def start(self) -> "TritonServer":
        """Start the server and block until it is ready; raises TritonServerError with the log otherwise."""
        if self.is_alive():
            return self
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} does not exist")
        ensure_triton_setup()
        for attempt in range(_PORT_RETRIES):
            self._launch()
            try:
                self._wait_ready()
                return self
            except TritonServerError:
                port_clash = "already in use" in self.log_text()[self._log_offset:]
                if port_clash and attempt + 1 < _PORT_RETRIES and not self.is_alive():
                    continue  # another process grabbed a port between free_ports() and bind: retry
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        env = dict(os.environ)
        env.setdefault("VENV_PYTHON", sys.executable)
        env.update(self.env)
        env.update(
            HOST=self.host,
            HEALTH_INTERVAL=f"{self.health_interval:g}",
            MODEL_REPOSITORY=str(self.model_repository),
            HTTP_PORT=str(self.http_port),
            GRPC_PORT=str(self.grpc_port),
            METRICS_PORT=str(self.metrics_port),
        )
        self.returncode = None
        self._log_offset = len(self.log_text())
        with open(self.log_path, "ab") as log:
            log.write(f"### {' '.join(self.command())}  (http {self.http_port}, grpc {self.grpc_port}, "
                      f"metrics {self.metrics_port})\n".encode())
            log.flush()
            # Own session: a Ctrl-C in the test runner does not hit it, and stop()'s SIGKILL fallback can take
            # the stubs too.
            self.process = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._t0 = time.monotonic()
        _live_servers.add(self)

    def _wait_ready(self) -> None:
        deadline = self._t0 + self.startup_timeout
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        while True:
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise TritonServerError(
                    f"tritonserver exited with code {code} during start-up\n{self._log_tail()}")
            # The metrics port opens a few ms after the HTTP port: wait for both, so tests can read counters.
            if self._http_status(url) == 200 and self._http_status(self.metrics_url) == 200:
                return
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {self.startup_timeout:.0f} s\n{self._log_tail()}")
            time.sleep(0.25)

    @staticmethod
    def _http_status(url: str, timeout: float = 2.0) -> Optional[int]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def triton_pid(self) -> Optional[int]:
        """PID of the tritonserver process (the Popen process itself, or its child when serve.sh runs it under
        the supervisor); None if there is none."""
        if self.process is None:
            return None
        if _command_name(self.process.pid) == "tritonserver":
            return self.process.pid
        return next((pid for pid in _children(self.process.pid) if _command_name(pid) == "tritonserver"), None)

    def stub_pids(self) -> dict[str, int]:
        """{model name: PID of its python backend stub} (the stubs are children of tritonserver)."""
        stubs = {}
        for pid in _children(self.triton_pid() or -1):
            argv = _argv(pid)
            if argv and argv[0].endswith("triton_python_backend_stub") and len(argv) > 1:
                stubs[Path(argv[1]).parents[1].name] = pid  # <repo>/<model>/<version>/model.py
        return stubs

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM the server, wait up to ``timeout`` s (then SIGKILL its process group); return its exit code.

        Clients made by http_client()/grpc_client() are closed first: tritonserver's graceful shutdown waits
        for every open HTTP connection (keep-alive included) for up to --exit-timeout-secs (30 s by default),
        so close clients you made yourself before stopping. Returns None if never started. Idempotent.
        """
        proc = self.process
        if proc is None:
            return None
        self._close_clients()
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(f"### no exit {timeout:.0f} s after SIGTERM: SIGKILL\n".encode())
                self._kill_group()
                proc.wait()
        self.returncode = proc.returncode
        _live_servers.discard(self)
        return self.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ observability
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        text = self.log_text()
        if len(text) > _LOG_TAIL_CHARS:
            text = "[...]\n" + text[-_LOG_TAIL_CHARS:]
        return f"--- tritonserver log ({self.log_path}) ---\n{text}--- end of log ---"

    def metrics(self, timeout: float = 10.0) -> str:
        """The Prometheus text from the metrics endpoint."""
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of metric ``name`` whose labels include ``labels`` (0.0 if none)."""
        return sum_metric(self.metrics(), name, **labels)

    def http_client(self, **kwargs):
        """A tritonclient.http client for this server; stop() closes it."""
        client = httpclient.InferenceServerClient(self.http_url, **kwargs)
        self._clients.append(client)
        return client

    def grpc_client(self, **kwargs):
        """A tritonclient.grpc client for this server; stop() closes it."""
        client = grpcclient.InferenceServerClient(self.grpc_url, **kwargs)
        self._clients.append(client)
        return client

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else f"exited {self.returncode}"
        return f"TritonServer({self.model_repository}, http={self.http_url}, {state})"


def _children(pid: int) -> list[int]:
    """Child PIDs of pid (forked by any of its threads)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _command_name(pid: int) -> str:
    argv = _argv(pid)
    return Path(argv[0]).name if argv else ""


# Triton types of the models' inputs: name -> (Triton type, numpy dtype).
INPUT_TYPES = {
    "input_ids": ("INT32", np.int32), "text_input": ("BYTES", object), "max_tokens": ("INT32", np.int32),
    "temperature": ("FP32", np.float32), "top_k": ("INT32", np.int32), "top_p": ("FP32", np.float32),
    "seed": ("UINT64", np.uint64), "end_id": ("INT32", np.int32), "stop_words": ("BYTES", object),
    "exclude_input_in_output": ("BOOL", bool), "return_num_input_tokens": ("BOOL", bool),
    "return_num_output_tokens": ("BOOL", bool), "stream": ("BOOL", bool), "min_length": ("INT32", np.int32),
    "frequency_penalty": ("FP32", np.float32), "presence_penalty": ("FP32", np.float32),
    "repetition_penalty": ("FP32", np.float32), "beam_width": ("INT32", np.int32),
}


def make_inputs(client_module, **fields):
    """InferInputs of tritonclient.http or .grpc; a list/tuple is one sequence ([1, n]), a scalar is [1, 1]."""
    out = []
    for name, value in fields.items():
        triton_type, dtype = INPUT_TYPES[name]
        if isinstance(value, str):
            value = value.encode()
        arr = np.array([list(value)] if isinstance(value, (list, tuple)) else [[value]], dtype=dtype)
        if name == "input_ids" and arr.size == 0:
            arr = arr.reshape(1, 0)
        tensor = client_module.InferInput(name, list(arr.shape), triton_type)
        tensor.set_data_from_numpy(arr)
        out.append(tensor)
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def sum_metric(text: str, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` in Prometheus text whose labels include all of ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(3) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(4))
    return total


def counters(server: TritonServer, *models: str) -> dict[str, tuple[int, int]]:
    """{model: (requests Triton counted as successful, tokens the model counted as generated)}."""
    text = server.metrics()
    return {m: (int(sum_metric(text, "nv_inference_request_success", model=m)),
                int(sum_metric(text, "gpt_generated_tokens_total", model=m))) for m in models}


def settled_counters(server: TritonServer, before: Mapping[str, tuple[int, int]], want: Mapping[str, int],
                     timeout: float = 3.0) -> dict[str, tuple[int, int]]:
    """counters() for the models of ``want`` once each counted at least ``want[model]`` more successful requests
    than in ``before`` (or ``timeout`` s passed): a model may bump them just after its last response."""
    deadline = time.monotonic() + timeout
    while True:
        now = counters(server, *want)
        if all(now[m][0] - before[m][0] >= n for m, n in want.items()) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def explain(proc: subprocess.CompletedProcess) -> str:
    """A finished subprocess's exit status and output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@atexit.register
def _stop_leftovers() -> None:  # a test that forgot stop() must not leave a server behind
    for server in list(_live_servers):
        try:
            server.stop(timeout=10)
        except Exception:
            pass


def configure(config: str, parameters: dict, **fields) -> str:
    """config.pbtxt text with Triton fields (max_batch_size: 4) replaced and a parameters block appended."""
    for key, value in fields.items():
        config, n = re.subn(rf"\b{key}: \d+", f"{key}: {value}", config)
        assert n == 1, key
    entries = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return config + f"parameters [\n{entries}\n]\n"
