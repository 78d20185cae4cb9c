"""Reliability checks on one shared server (none of them stops or breaks it): locked-down defaults (issue 13 item
5), the health check command, and the battery that already held at 95f41b7 (bad input, batch isolation, overload,
cancellation, client disconnect, a short soak with the RSS checked)."""
import concurrent.futures as cf
import os
import socket
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.triton_server import free_ports
from tests.reliability.helpers import (ADMIN_KEY, PLAIN, QUEUE, SLOTS, STREAM, Stream, generate, health_check,
                                       inputs, rss_mb)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GRPC_ADMIN_HEADER = "triton-grpc-protocol-admin-key"
SOAK_S = 60


def http(server, path, body=None, headers=None):
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# -- locked-down defaults ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [("/v2/logging", b'{"log_verbose_level": 0}'),
                                        ("/v2/trace/setting", b"{}"),
                                        ("/v2/systemsharedmemory/status", None),
                                        ("/v2/repository/index", b"{}")])
def test_admin_http_apis_need_the_admin_key_header(server, path, body):
    assert http(server, path, body) == 403
    assert http(server, path, body, {"admin-key": "wrong-key-wrong-key"}) == 403
    assert http(server, path, body, {"admin-key": ADMIN_KEY}) == 200


def test_admin_grpc_apis_need_the_admin_key_header(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    calls = [lambda **h: client.update_log_settings({"log_verbose_level": 0}, **h),
             lambda **h: client.get_trace_settings(**h),
             lambda **h: client.get_system_shared_memory_status(**h),
             lambda **h: client.get_model_repository_index(**h)]
    try:
        for call in calls:
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
            call(headers={GRPC_ADMIN_HEADER: ADMIN_KEY})
    finally:
        client.close()


def test_ports_bind_127_0_0_1_only(server):
    """A wildcard bind (0.0.0.0, the default before) answers on every address of the machine, 127.0.0.2 included;
    serve.sh's default HOST=127.0.0.1 does not."""
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        with socket.socket() as probe:
            probe.settimeout(3)
            assert probe.connect_ex(("127.0.0.2", port)) != 0, f"port {port} answers on 127.0.0.2"
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            pass


# -- the health check command -------------------------------------------------------------------------------------
def test_health_check_exit_statuses(server):
    ok = health_check("--url", server.grpc_url, "--timeout", "10")
    assert ok.returncode == 0 and ok.stdout.startswith("healthy:"), ok.stdout
    env = dict(os.environ, HOST="127.0.0.1", GRPC_PORT=str(server.grpc_port))
    assert health_check("--timeout", "10", env=env).returncode == 0
    closed = health_check("--url", f"127.0.0.1:{free_ports(1)[0]}", "--timeout", "3")
    assert closed.returncode == 2 and closed.stdout.startswith("unreachable:"), closed.stdout


# -- what already held at 95f41b7 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [PLAIN, STREAM])
def test_bad_input_gets_invalid_arg_naming_the_field(server, model):
    if model == PLAIN:
        with pytest.raises(InferenceServerException) as err:
            generate(server, input_ids=[1, 2], max_tokens=5000)
        message = err.value.message()
    else:
        s = Stream(server)
        try:
            s.send(input_ids=[1, 2], max_tokens=5000)
            message = str(s.until_final()[-1][1])
        finally:
            s.close()
    assert "max_tokens=5000 is outside the allowed range" in message
    assert health_check("--url", server.grpc_url).returncode == 0


def test_one_bad_request_in_a_batch_fails_alone(server):
    good = generate(server, input_ids=[5, 6, 7], max_tokens=4, temperature=0.0)
    fields = [dict(input_ids=[5, 6, 7], max_tokens=4, temperature=0.0)] * 7 + [dict(input_ids=[5, 99999],
                                                                                       max_tokens=4)]
    with cf.ThreadPoolExecutor(len(fields)) as pool:
        futures = [pool.submit(generate, server, **f) for f in fields]
    for future in futures[:-1]:
        assert (future.result() == good).all()
    with pytest.raises(InferenceServerException, match="input_ids"):
        futures[-1].result()


def test_overload_is_unavailable_and_the_server_stays_ready(server):
    """A burst beyond the slots and the model's queue (max_queue_size QUEUE): the excess is refused at once."""
    streams = [Stream(server) for _ in range(2 * SLOTS + QUEUE + 3)]
    try:
        for s in streams:
            s.send(input_ids=[1, 2, 3], max_tokens=40, end_id=-1)
        outcomes = [s.until_final()[-1][1] for s in streams]
    finally:
        for s in streams:
            s.close()
    refused = [e for e in outcomes if e is not None]
    assert refused and all("max_queue_size" in str(e) for e in refused), refused
    assert len(outcomes) - len(refused) >= SLOTS
    assert health_check("--url", server.grpc_url).returncode == 0


def test_health_check_counts_a_full_stream_model_as_busy_not_broken(server):
    """Every slot and the whole queue taken: the check's request is refused "server busy" (on its gRPC stream,
    without a status code), which is overload, not a reason to restart."""
    streams = [Stream(server) for _ in range(SLOTS + QUEUE)]
    try:
        for s in streams:
            s.send(input_ids=[1, 2, 3], max_tokens=400, end_id=-1)  # 8 s each at STEP_MS
        deadline = time.monotonic() + 30
        while server.metric("gpt_waiting_requests", model=STREAM) < QUEUE:
            assert time.monotonic() < deadline, "the queue did not fill"
            time.sleep(0.05)
        check = health_check("--url", server.grpc_url, "--models", STREAM)
    finally:
        for s in streams:
            s.close(cancel=True)
        deadline = time.monotonic() + 30  # the next test starts on an idle model
        while server.metric("gpt_inflight_requests", model=STREAM) + server.metric("gpt_waiting_requests",
                                                                                   model=STREAM) > 0:
            assert time.monotonic() < deadline, "the cancelled requests still hold the model"
            time.sleep(0.05)
    assert check.returncode == 0 and f"{STREAM} busy" in check.stdout, check.stdout


def test_cancelled_and_disconnected_clients_leave_the_server_healthy(server):
    s = Stream(server)
    s.send(input_ids=[1, 2, 3], max_tokens=200, stream=True, end_id=-1)
    s.events.get(timeout=30)  # generating
    s.close(cancel=True)
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{STREAM}/generate_stream",
                                     data=b'{"input_ids": [1, 2, 3], "max_tokens": 200, "end_id": -1, "stream": true}')
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.readline().startswith(b"data:")  # then the client goes away mid-stream
    deadline = time.monotonic() + 30
    while server.metric("gpt_inflight_requests", model=STREAM) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.metric("gpt_inflight_requests", model=STREAM) == 0
    assert server.metric("gpt_cancelled_requests_total", model=STREAM) >= 1
    assert health_check("--url", server.grpc_url).returncode == 0


def test_short_soak_keeps_every_request_answered_and_the_rss_flat(server):
    pid = server.triton_pid()

    def worker(n):
        done, deadline = 0, time.monotonic() + SOAK_S
        while time.monotonic() < deadline and done < 2000:
            if n % 2:
                generate(server, input_ids=[n, 2, 3], max_tokens=8)
            else:
                s = Stream(server)
                try:
                    s.send(input_ids=[n, 2, 3], max_tokens=8, stream=True)
                    assert s.until_final()[-1][1] is None
                finally:
                    s.close()
            done += 1
        return done

    with cf.ThreadPoolExecutor(2) as pool:  # warm-up: the first requests allocate what later ones reuse
        list(pool.map(lambda n: generate(server, input_ids=[n], max_tokens=8), range(20)))
    before = rss_mb(pid)
    with cf.ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(worker, range(4)))
    after = rss_mb(pid)
    assert sum(counts) > 40, counts
    assert after - before < 50, f"tritonserver RSS {before:.0f} -> {after:.0f} MB over {sum(counts)} requests"
    assert health_check("--url", server.grpc_url).returncode == 0
