"""A real Prometheus (Debian's prometheus package, or any `prometheus` binary) for the deployment tests.

    with PrometheusServer(config, tmp_path) as prom:
        prom.wait_for("pod_model:gptserve_slot_demand:ratio > 0", timeout=60)

It listens on a free 127.0.0.1 port, keeps its TSDB under the given directory and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

import yaml

from tests.deploy.check_tools import tool
from tests.integration.triton_server import free_ports

Sample = tuple[dict, float]


class PrometheusError(RuntimeError):
    """Prometheus did not start, or a query failed (message carries its log tail)."""


class PrometheusServer:
    def __init__(self, config: dict, workdir: Path, startup_timeout: float = 60.0) -> None:
        self.config, self.workdir, self.startup_timeout = config, Path(workdir), startup_timeout
        self.log_path = self.workdir / "prometheus.log"
        self.port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusServer":
        binary = tool("prometheus")
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config))
        (self.port,) = free_ports(1)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config_path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise PrometheusError(f"prometheus did not get ready\n{self.log_tail()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 5000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- prometheus log ({self.log_path}) ---\n{text[-chars:]}\n--- end ---"

    def api(self, path: str, **params: str) -> object:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"/api/v1/{path} {params}: HTTP {e.code} {e.read().decode()}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"/api/v1/{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant vector query: [(labels, value)]."""
        data = self.api("query", query=expr)
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def wait_for(self, expr: str, timeout: float, interval: float = 0.5) -> list[Sample]:
        """Poll until the query returns a sample; the samples, or PrometheusError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.query(expr)
            if samples:
                return samples
            if time.monotonic() > deadline:
                raise PrometheusError(f"no sample for {expr!r} within {timeout:.0f} s")
            time.sleep(interval)
