"""Issue 13 items 2 and 4 (a dead stub is noticed; shutdown always completes) and 5 (admin APIs closed without
ADMIN_KEY, HOST opens the ports). Each test starts its own server through scripts/serve.sh: it kills or stops it."""
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.reliability.helpers import PLAIN, STREAM, Stream, health_check, shm_regions, start_server

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
DRAIN_S = 10  # drain_timeout_ms of model_repository/gpt_large_stream/config.pbtxt
NOTICE_S = 15
UNHEALTHY_STOP_S = 3  # scripts/supervise.py: SIGTERM to kill when tritonserver is unhealthy


def http_status(url: str, method: str = "GET", body: bytes | None = None) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def wait_exit(server, timeout: float) -> int | None:
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("model", [PLAIN, STREAM])
def test_killed_stub_is_noticed_and_leaves_no_shm(model):
    server = start_server()
    try:
        regions = shm_regions(server.triton_pid())
        assert regions
        killed_at = time.monotonic()
        os.kill(server.stub_pids()[model], signal.SIGKILL)
        check = health_check("--url", server.grpc_url, "--timeout", "10")
        assert check.returncode != 0 and time.monotonic() - killed_at < NOTICE_S, check.stdout
        # noticed within NOTICE_S, then the supervisor gives tritonserver UNHEALTHY_STOP_S before killing it
        code = wait_exit(server, NOTICE_S + UNHEALTHY_STOP_S - (time.monotonic() - killed_at))
        supervisor = "\n".join(line for line in server.log_text().splitlines() if line.startswith("supervise:"))
        assert code == 3, f"supervisor status {code} {NOTICE_S + UNHEALTHY_STOP_S} s after kill -9 of the {model} " \
                          f"stub; its log:\n{supervisor}"
        assert http_status(f"http://{server.http_url}/v2/health/ready") != 200
        assert not [r for r in regions if os.path.exists(r)]
    finally:
        server.stop()
    assert "unhealthy" in server.log_text()


def test_sigterm_with_8_open_streams_exits_0_within_drain_plus_5_s():
    server = start_server()
    streams = [Stream(server) for _ in range(8)]
    try:
        for i, s in enumerate(streams):
            s.send(str(i), input_ids=[10, 20, 30], max_tokens=8, stream=True)
        for s in streams:  # every client got its final response and keeps its stream open
            assert s.until_final()[-1][1] is None
        regions = shm_regions(server.triton_pid())
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = wait_exit(server, DRAIN_S + 5)
        took = time.monotonic() - started
    finally:
        for s in streams:
            s.close()
        server.stop()
    assert code == 0, f"status {code} after {took:.1f} s"
    assert not [r for r in regions if os.path.exists(r)]


def test_plain_sigterm_exits_0_quickly_and_host_opens_the_ports():
    """Without ADMIN_KEY the admin APIs are closed (a random key per start). HOST=0.0.0.0 binds every address:
    127.0.0.2 (loopback, not the default 127.0.0.1) reaches the server."""
    server = start_server(models=[PLAIN])
    assert http_status(f"http://{server.http_url}/v2/logging", "POST", b'{"log_verbose_level":1}') == 403
    server.stop()  # the harness server binds 127.0.0.1; this one is started again with HOST=0.0.0.0
    server.host = "0.0.0.0"
    server.start()
    try:
        assert http_status(f"http://127.0.0.2:{server.http_port}/v2/health/ready") == 200
        regions = shm_regions(server.triton_pid())
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = wait_exit(server, 10)
        took = time.monotonic() - started
    finally:
        server.stop()
    assert code == 0 and took < 10, f"status {code} after {took:.1f} s"
    assert not [r for r in regions if os.path.exists(r)]
