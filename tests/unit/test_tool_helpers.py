"""The tools' shared modules without a server: where the server is found, Prometheus text, statistics, token
counting of responses that carry several tokens, the client-saturation notes, the load-test picture, and closing
a client once.

Responses are real tritonclient InferResult objects built from the gRPC protobuf the server sends."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2

from tools import endpoints, load_test, plots, warmup
from tools.cli import ToolError
from tools.metrics import MetricsSnapshot, parse_metrics
from tools.payload import is_final_response, reported_tokens, response_ids
from tools.saturation import client_notes
from tools.stats import percentile, summarize


# ---------------------------------------------------------------------------------------------------- endpoints
def test_the_server_is_found_from_flags_else_the_serve_variables_else_defaults():
    found = endpoints.resolve(env={})
    assert (found.url, found.metrics_url) == ("127.0.0.1:8001", "http://127.0.0.1:8002/metrics")
    assert found.url_from == "defaults"

    env = {"HOST": "node7", "GRPC_PORT": "18001", "HTTP_PORT": "18000", "METRICS_PORT": "18002"}
    found = endpoints.resolve(env=env)
    assert (found.url, found.metrics_url) == ("node7:18001", "http://node7:18002/metrics")
    assert "HOST" in found.url_from and "GRPC_PORT" in found.url_from and "METRICS_PORT" in found.metrics_from
    assert endpoints.resolve(protocol="http", env=env).url == "node7:18000"

    # a flag wins; a missing port comes from the variable; the metrics host follows the server's
    assert endpoints.resolve("grpc://gpu:9001/", env=env).url == "gpu:9001"
    found = endpoints.resolve("gpu", env=env)
    assert (found.url, found.metrics_url) == ("gpu:18001", "http://gpu:18002/metrics")
    assert endpoints.resolve("[::1]:5", env={}).metrics_url == "http://[::1]:8002/metrics"
    assert endpoints.resolve(metrics_url="m:9/x", env=env).metrics_url == "http://m:9/x"
    assert endpoints.resolve(metrics_url="m:9", env=env).metrics_url == "http://m:9/metrics"
    assert endpoints.resolve(metrics_url="none", env=env).metrics_url is None

    with pytest.raises(ToolError, match="GRPC_PORT='80a' is not a port number"):
        endpoints.resolve(env={"GRPC_PORT": "80a"})


# ---------------------------------------------------------------------------------------------------- metrics
TRITON_TEXT = r'''# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="gpt_large",version="1"} 12
nv_inference_request_success{model="gpt_large_stream",version="1"} 5
# TYPE gpt_generated_tokens_total counter
gpt_generated_tokens_total{model="gpt_large"} 96
# TYPE gpt_batch_size histogram
gpt_batch_size_bucket{model="gpt_large",le="1"} 3
gpt_batch_size_bucket{model="gpt_large",le="+Inf"} 4
gpt_batch_size_sum{model="gpt_large"} 7
gpt_batch_size_count{model="gpt_large"} 4
# TYPE gpt_max_abs_diff gauge
gpt_max_abs_diff{model="gpt_large"} 0.053
odd{path="a \"quoted\" \\ back\nslash"} 1
'''


def test_prometheus_text_is_read_with_its_exposed_names():
    snap = MetricsSnapshot(parse_metrics(TRITON_TEXT))
    # Triton's counter without _total and the model's with it are both found by the names they are exposed as
    assert snap.sum("nv_inference_request_success", model="gpt_large") == 12
    assert snap.sum("nv_inference_request_success") == 17
    assert snap.sum("gpt_generated_tokens_total", model="gpt_large") == 96
    assert snap.sum("gpt_batch_size_count", model="gpt_large") == 4
    assert snap.sum("gpt_max_abs_diff", model="gpt_large") == pytest.approx(0.053)
    assert snap.sum("gpt_max_abs_diff", model="gpt_large_stream") is None
    assert snap.select("odd")[0].labels["path"] == 'a "quoted" \\ back\nslash'  # escapes decoded
    later = MetricsSnapshot(parse_metrics(TRITON_TEXT.replace("} 12", "} 20")))
    assert later.delta(snap, "nv_inference_request_success", model="gpt_large") == 8


# ---------------------------------------------------------------------------------------------------- stats
def test_summaries_are_numpy_percentiles():
    values = [5.0, None, 1.0, 3.0, float("nan"), 2.0, 4.0]
    s = summarize(values)
    clean = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert s["count"] == 5 and s["min"] == 1.0 and s["max"] == 5.0 and s["mean"] == 3.0
    assert s["std"] == pytest.approx(np.std(clean))
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(clean, q))
    assert summarize([])["p99"] is None and summarize([])["count"] == 0
    assert percentile([], 99) is None and percentile([1.0, 3.0], 50) == 2.0


# ---------------------------------------------------------------------------------------------------- responses
def grpc_result(ids=None, num_output_tokens=None, final=False) -> InferResult:
    """A tritonclient gRPC InferResult as a streamed response of the models would give it."""
    response = service_pb2.ModelInferResponse(model_name="gpt_large_stream", id="1")
    for name, value in (("output_ids", ids), ("num_output_tokens", num_output_tokens)):
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.int32).reshape(1, -1)
        response.outputs.add(name=name, datatype="INT32", shape=list(arr.shape))
        response.raw_output_contents.append(arr.tobytes())
    if final:
        response.parameters["triton_final_response"].bool_param = True
    return InferResult(response)


def test_tokens_are_counted_over_every_response_whatever_each_carries():
    # coalesced delivery: 3 ids, then 1, then a final response with the last 2 and the server's count
    stream = [grpc_result([7, 8, 9]), grpc_result([10]), grpc_result([11, 12], num_output_tokens=6, final=True)]
    assert sum(len(response_ids(r)) for r in stream) == 6
    assert [reported_tokens(r) for r in stream] == [None, None, 6]
    assert [is_final_response(r) for r in stream] == [False, False, True]
    empty_final = grpc_result([], num_output_tokens=4, final=True)
    assert response_ids(empty_final) == [] and reported_tokens(empty_final) == 4
    assert response_ids(grpc_result(None, num_output_tokens=0, final=True)) == []


# ---------------------------------------------------------------------------------------------------- saturation
def test_client_notes_say_when_the_client_fell_behind_or_the_cpu_was_saturated():
    idle = {"loop_thread_busy": 0.2, "host_cpu_busy": 0.3, "host_cpus": 2}
    assert client_notes(idle, 0, 10, 10.0, 0.5) == []
    notes = client_notes(idle, 3, 10, 10.0, 151.0)
    assert len(notes) == 1 and "client fell behind its schedule: 3 of 10 sends" in notes[0] and "151 ms" in notes[0]
    busy = {"loop_thread_busy": 0.97, "host_cpu_busy": 0.99, "host_cpus": 2}
    notes = client_notes(busy, 0, 10, 10.0, 0.5)
    assert any("client CPU saturated" in n and "97%" in n for n in notes)
    assert any("host CPU 99% busy" in n for n in notes)
    assert client_notes({"loop_thread_busy": None, "host_cpu_busy": None, "host_cpus": 2}, 0, 1, 10.0, 0) == []


# ---------------------------------------------------------------------------------------------------- pictures
def test_load_test_picture_labels_its_slo_lines_and_says_why_it_failed(tmp_path):
    args = load_test.parse_args(["--model", "gpt_large_stream", "--slo", "e2e_ms=50,p99_ttft_ms=20",
                                 "--metrics-url", "none", "--target-qps", "10"])
    records = []
    for i in range(20):  # 20 streamed requests of 4 tokens, the later ones slow
        r = load_test.Record(i, scheduled=0.1 * i, prompt_tokens=8, send_start=0.1 * i, ok=True)
        r.token_times = [r.scheduled + 0.01 * (1 + i) * k for k in (1, 2, 3, 4)]
        r.first_token, r.end, r.streamed_tokens, r.reported_tokens = r.token_times[0], r.token_times[-1], 4, 4
        records.append(r)
    runner = argparse.Namespace(records=records, streaming=True, decoupled=True, before=None, after=None,
                                stats_before=None, stats_after=None, metrics_error="not read",
                                client_load={"loop_thread_busy": 0.1, "host_cpu_busy": 0.2, "host_cpus": 2})
    report = load_test.build_report(args, runner)
    assert report["passed"] is False and report["slo_checked"] is True
    fig = plots.load_test_figure(records, True, load_test.latency_values(records, True), report,
                                 load_test.verdict_notes(report), args)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "SLO e2e <= 50 ms (per request)" in labels and "SLO ttft <= 20 ms (p99)" in labels
    title = fig._suptitle.get_text()
    assert "FAILED: SLO attainment" in title and "p99_ttft_ms: measured" in title
    path = tmp_path / "lt.png"
    plots.save(fig, str(path))
    assert path.stat().st_size > 20_000


def test_the_tools_import_neither_gptserve_nor_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['gptserve'] = sys.modules['torch'] = None; "
            "import tools.load_test, tools.warmup, tools.power_monitor, tools.compare_models, tools.plots")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr


def test_warmup_batch_sizes_double_up_to_the_models_max_batch_size():
    assert warmup.default_batch_sizes(16) == (1, 2, 4, 8, 16)  # gpt_large
    assert warmup.default_batch_sizes(64) == (1, 2, 4, 8, 16, 32, 64)  # gpt_large_stream
    assert warmup.default_batch_sizes(12) == (1, 2, 4, 8, 12)
    assert warmup.default_batch_sizes(1) == (1,) and warmup.default_batch_sizes(0) == (1,)  # 0: no batching


# ---------------------------------------------------------------------------------------------------- clients
def test_a_client_is_closed_once_even_when_garbage_collection_closes_it_again():
    """close_client closes a real gRPC client's channel, and the close its __del__ makes later does nothing (a second
    channel close under Locust's gevent hung a locust at exit)."""
    import tritonclient.grpc as grpcclient

    from tools.client import close_client

    client = grpcclient.InferenceServerClient("127.0.0.1:1")  # no server needed: nothing connects
    channel, closes = client._channel, []
    close_channel = channel.close
    channel.close = lambda: closes.append(1) or close_channel()
    close_client(client)
    client.__del__()
    del client
    assert closes == [1]
