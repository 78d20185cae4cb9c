#!/usr/bin/env python3
"""Run tritonserver behind its HTTP front, watch its deep health, and stop it cleanly (stdlib and the pure-Python
gptserve.settings only).

scripts/serve.sh (so `make serve` and the Docker image) execs this:

    supervise.py --host H --http-port P --grpc-port P --metrics-port P [options] -- TRITONSERVER [ARGS...]

- Starts tritonserver (HTTP and metrics on Unix sockets, see supervisor/front.py) and Caddy on the public HTTP and
  metrics ports, with /generate bodies checked by the generate gate (supervisor/gate.py) on the way; the gRPC port
  is tritonserver's own.
- Runs `tools.health_check --watch`: two failed checks in a row (a dead stub, a model that does not answer within
  the deadline) stop the server and the supervisor exits 3, so systemd, Docker or Kubernetes restart it. Until
  the first check passes, "unreachable" and "not ready" are start-up, not failures. A python backend stub that
  exits (seen within a second) gets a check at once instead of at the next interval.
- SIGTERM, SIGINT or SIGHUP: tritonserver gets SIGTERM and --exit-timeout-secs = drain + 1 s (the largest
  drain_timeout_ms of the served models, 10 s by default); if it is still running 2 s after that (Triton 2.51 does
  not exit while a client keeps a gRPC stream open), it is killed. Exit status 0. A second signal kills at once.
- On the way out, removes the python backend's shared-memory regions its tritonserver had mapped.

Exit status: 0 stopped on request; 3 unhealthy; 4 Caddy or the health check process died; otherwise
tritonserver's own status (1: e.g. a model failed to load; 128+N: killed by signal N).
"""
from __future__ import annotations

import argparse
import math
import re
import signal
import sys
import time
from pathlib import Path

from gptserve.settings import ServingConfig
from supervisor.front import Front, thread_stack_bytes
from supervisor.gate import Gate
from supervisor.health import STARTING, HealthWatcher
from supervisor.process import exit_status, kill, signal_group, spawn, wait_until
from supervisor.shm import ShmRegions
from supervisor.stubs import StubWatch

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_REQUESTED, EXIT_UNHEALTHY, EXIT_HELPER_DIED = 0, 3, 4
DEFAULT_DRAIN_MS = ServingConfig.drain_timeout_ms  # a served model's, unless its config.pbtxt sets one
DRAIN = re.compile(r'key:\s*"drain_timeout_ms"\s*value:\s*\{\s*string_value:\s*"(\d+)"')
UNHEALTHY_STOP_S = 3.0  # a broken server gets this long to stop before it is killed
HELPER_STOP_S = 2.0


def log(message: str) -> None:
    now = time.time()
    print(f"supervise: {time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {message}",
          file=sys.stderr, flush=True)


def option(args: list[str], name: str) -> list[str]:
    """Every value of a tritonserver flag given as `--name=value` or `--name value`."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            values.append(arg.split("=", 1)[1])
        elif arg == f"--{name}" and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def served_models(triton_args: list[str]) -> list[str]:
    """The models tritonserver loads: --load-model names in explicit mode, else every model in the repository."""
    loads = [m for m in option(triton_args, "load-model") if m != "*"]
    if "explicit" in option(triton_args, "model-control-mode") and loads:
        return loads
    repos = [Path(r) for r in option(triton_args, "model-repository")]
    return sorted(p.parent.name for r in repos for p in r.glob("*/config.pbtxt"))


def drain_seconds(triton_args: list[str], models: list[str]) -> int:
    """The largest drain_timeout_ms among the served models' config.pbtxt, in whole seconds."""
    found = [int(ms) for r in option(triton_args, "model-repository") for m in models
             for ms in DRAIN.findall(_read(Path(r) / m / "config.pbtxt"))]
    return math.ceil(max(found, default=DEFAULT_DRAIN_MS) / 1000)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class Supervisor:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        triton_args = args.command[1:]
        self.models = served_models(triton_args)
        given = option(triton_args, "exit-timeout-secs")
        self.exit_timeout = int(given[-1]) if given else drain_seconds(triton_args, self.models) + 1
        self.front = Front(args.caddy, args.host, args.http_port, args.metrics_port, args.max_body,
                           grace_s=self.exit_timeout)
        self.gate = Gate(self.front.dir / "gate.sock", self.front.dir / "http.sock")
        self.command = args.command + self.front.triton_args() + ([] if given else
                                                                  [f"--exit-timeout-secs={self.exit_timeout}"])
        health_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        self.watcher = HealthWatcher(args.python, f"{health_host}:{args.grpc_port}", self.models,
                                     args.health_interval, args.health_timeout, cwd=str(REPO_ROOT),
                                     enabled=args.health_interval > 0)
        self.shm = ShmRegions()
        self.stubs = StubWatch()
        self.signals = 0
        self.triton = None

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        health = (f"deep health check of {', '.join(self.models)} every {self.args.health_interval:g} s"
                  if self.watcher.enabled else "no deep health check (HEALTH_INTERVAL=0)")
        log(f"tritonserver with --exit-timeout-secs={self.exit_timeout}; HTTP body limit {self.args.max_body} "
            f"bytes; {health}")
        try:
            self.triton = spawn(self.command, stack_bytes=thread_stack_bytes(self.args.max_body))
            self.gate.start()
            self.front.start(spawn)
            self.watcher.start()
            return self._supervise()
        finally:
            self._clean_up()

    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        if self.signals > 1:
            log(f"{signal.Signals(signum).name} again: killing tritonserver now")

    def _supervise(self) -> int:
        healthy_once, failures, next_track = False, 0, 0.0
        while True:
            if self.signals:
                return self._stop_on_request()
            code = self.triton.poll()
            if code is not None:
                log(f"tritonserver exited by itself with status {exit_status(code)}")
                return exit_status(code)
            if self.front.process.poll() is not None:
                log(f"the HTTP front (caddy) exited with status {self.front.process.returncode}: stopping")
                self._stop(HELPER_STOP_S)
                return EXIT_HELPER_DIED
            if time.monotonic() >= next_track:
                self.shm.track(self.triton.pid)
                exited = self.stubs.exited(self.triton.pid)  # at start-up, the auto-complete stubs exit
                if exited and healthy_once and self.watcher.check_now():
                    log(f"python backend stub {', '.join(map(str, sorted(exited)))} exited: checking health now")
                next_track = time.monotonic() + 1.0
            line = self.watcher.next(timeout=0.2)
            if line is None:
                log("the health check process exited (see its error above): stopping")
                self._stop(HELPER_STOP_S)
                return EXIT_HELPER_DIED
            if not line:
                continue
            if line.startswith("healthy"):
                if not healthy_once or failures:
                    log(line)
                healthy_once, failures = True, 0
            elif healthy_once or not line.startswith("unreachable") and not line.endswith(STARTING):
                failures += 1
                log(f"health check failed ({failures} of {self.args.failures}): {line}")
                if failures >= self.args.failures:
                    log("tritonserver is unhealthy: stopping it")
                    self._stop(UNHEALTHY_STOP_S)
                    return EXIT_UNHEALTHY

    def _stop_on_request(self) -> int:
        """0 once tritonserver is down by the deadline, however it ended (its own status is logged): after
        --exit-timeout-secs, 2.51 exits 1 or hangs whenever a model did not unload, which a client that holds or
        dropped a stream to the stream model causes, although every request was answered."""
        log(f"stop requested: tritonserver gets SIGTERM and up to {self.exit_timeout + 2} s")
        code = self._stop(self.exit_timeout + 2.0)
        if code != 0:
            log(f"tritonserver {'was killed' if code is None else f'exited with status {exit_status(code)}'} while "
                "stopping (2.51 does so when a model does not unload in time, e.g. while a client holds a gRPC "
                "stream to a decoupled model open or dropped one)")
        return EXIT_REQUESTED

    def _stop(self, within_s: float) -> int | None:
        """SIGTERM tritonserver, Caddy and the health check together; kill tritonserver if it is still running
        within_s later. Returns tritonserver's exit status, or None when it had to be killed."""
        deadline = time.monotonic() + within_s
        for process in (self.triton, self.front.process):
            process.send_signal(signal.SIGTERM)
        self.watcher.stop()
        code = wait_until(self.triton, deadline, interrupted=lambda: self.signals > 1)
        if code is None:
            log(f"tritonserver still running {within_s:g} s after SIGTERM: killing it")
            kill(self.triton)
        if wait_until(self.front.process, time.monotonic() + HELPER_STOP_S) is None:
            kill(self.front.process)
        return code

    def _clean_up(self) -> None:
        self.watcher.stop()
        for process in (self.triton, self.front.process):
            if process is not None:
                if process.poll() is None:
                    kill(process)
                signal_group(process, signal.SIGKILL)  # a stub that outlived tritonserver
        self.gate.stop()
        removed = self.shm.remove_leftovers()
        if removed:
            log(f"removed {len(removed)} shared-memory region(s) left by tritonserver: {' '.join(removed)}")
        self.front.remove_files()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="supervise.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of the public ports (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001, help="tritonserver's gRPC port (for the health check)")
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-body", type=int, default=8 << 20, help="HTTP request body limit in bytes (8 MiB)")
    parser.add_argument("--caddy", default="caddy", help="the caddy binary")
    parser.add_argument("--python", default=sys.executable, help="interpreter for tools.health_check")
    parser.add_argument("--health-interval", type=float, default=5.0,
                        help="s between deep checks (default 5; 0: no deep check)")
    parser.add_argument("--health-timeout", type=float, default=10.0, help="deadline of one check (default 10)")
    parser.add_argument("--failures", type=int, default=2, help="failed checks in a row that stop the server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver and its arguments")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("missing: -- TRITONSERVER [ARGS...]")
    return args


if __name__ == "__main__":
    sys.exit(Supervisor(parse_args()).run())
