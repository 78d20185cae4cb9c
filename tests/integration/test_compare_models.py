"""tools/compare_models.py against a real tritonserver serving gpt_large and gpt_large_stream on CPU (tiny preset).

The tool runs as a subprocess, as an operator runs it, with a tiny sweep, finding the server through the
environment `make serve` reads (GRPC_PORT, METRICS_PORT) in the first test and through --url / --metrics-url in
the others. The assertions are on its JSON: counts against Triton's own counters (the tool's per-point readings
and this test's reading of the whole window), the same schedule for both models, latency statistics that make
sense, TTFT only for the streaming model, and the verdicts (highest sustained QPS, stop after a failed point, the
ratio); and on its picture of the sweep. Exit status 0 when it ran, 2 otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from tools import compare_models as tool_module
from tools import plots

from tests.integration.triton_server import (REPO_ROOT, TritonServer, counters, explain, free_ports,
                                             settled_counters)

pytestmark = pytest.mark.integration

PLAIN, STREAM = "gpt_large", "gpt_large_stream"
TOOL = REPO_ROOT / "tools" / "compare_models.py"
SMALL = ["--prompt-len-min", 8, "--prompt-len-max", 32, "--max-new-tokens", 8, "--cooldown", 0, "--no-progress"]


@pytest.fixture(scope="module")
def server():
    with TritonServer(REPO_ROOT / "model_repository", models=[PLAIN, STREAM], startup_timeout=240) as srv:
        yield srv


def compare(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("HOST", "GRPC_PORT", "HTTP_PORT", "METRICS_PORT")}
    # `python tools/compare_models.py` imports the `tools` package: installed by make setup, or the repo root here
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=dict(full_env, **(env or {})))


# ---------------------------------------------------------------------------------------------------- sweep
def test_sweep_reports_both_models_on_the_same_schedule(server, tmp_path):
    out = tmp_path / "cmp.json"
    before = counters(server, PLAIN, STREAM)
    proc = compare("--models", f"{PLAIN},{STREAM}", "--qps", "1,2", "--duration", 3, "--seed", 5, *SMALL,
                   "--output-json", out,
                   env={"GRPC_PORT": str(server.grpc_port), "METRICS_PORT": str(server.metrics_port)})
    assert proc.returncode == 0, explain(proc)
    assert f"server grpc {server.grpc_url} (from GRPC_PORT)" in proc.stderr
    r = json.loads(out.read_text())
    assert r["url"] == server.grpc_url and r["metrics_url"] == server.metrics_url
    assert r["complete"] is True and r["error"] is None
    assert list(r["models"]) == [PLAIN, STREAM]
    plain, stream = r["models"][PLAIN], r["models"][STREAM]
    assert plain["streaming"] is False and stream["streaming"] is True

    for name, m in r["models"].items():
        assert [p["qps"] for p in m["points"]] == [1.0, 2.0][:len(m["points"])] and m["points"], name
        for p in m["points"]:
            where = f"{name} @ {p['qps']}"
            assert p["scheduled"] >= 1 and p["failed"] == 0 and p["completed"] == p["scheduled"], where
            # the same window as Triton sees it: its metrics endpoint and its statistics API
            assert p["server_success"] == p["statistics_success"] == p["completed"], where
            assert p["server_generated_tokens"] == p["total_output_tokens"] == 8 * p["completed"], where
            assert 0 < p["e2e_p50_ms"] <= p["e2e_p90_ms"] <= p["e2e_p99_ms"], where
            assert p["output_throughput"] > 0 and p["request_throughput"] > 0, where
            if m["streaming"]:
                assert 0 < p["ttft_p50_ms"] <= p["ttft_p99_ms"] <= p["e2e_p99_ms"], where  # TTFT <= e2e per request
            else:
                assert p["ttft_p50_ms"] is None and p["ttft_p99_ms"] is None, where
            assert p["within_budget"] == (p["failed"] <= 0.01 * p["scheduled"] and p["completed"] > 0
                                          and p["e2e_p99_ms"] <= 2500), where
            lt = p["load_test"]  # load_test's own report of the point
            assert lt["model"] == name and lt["config"]["target_qps"] == p["qps"] and lt["passed"] == p["within_budget"]

    # both models saw the same arrivals and prompts at each point they both ran
    for p, s in zip(plain["points"], stream["points"]):
        assert p["schedule_fingerprint"] == s["schedule_fingerprint"] and p["scheduled"] == s["scheduled"]
        assert p["load_test"]["total_input_tokens"] == s["load_test"]["total_input_tokens"]

    # the whole run, as this test reads Triton's counters: nothing counted that the tool did not report
    want = {name: sum(p["completed"] for p in m["points"]) for name, m in r["models"].items()}
    after = settled_counters(server, before, want)
    for name, m in r["models"].items():
        assert after[name][0] - before[name][0] == want[name], name
        assert after[name][1] - before[name][1] == sum(p["total_output_tokens"] for p in m["points"]), name

    # verdicts
    for name, m in r["models"].items():
        leading = []
        for p in m["points"]:
            if not p["within_budget"]:
                break
            leading.append(p["qps"])
        assert m["highest_sustained_qps"] == (leading[-1] if leading else None), name
        assert m["capped_by_sweep"] == (m["highest_sustained_qps"] == 2.0)
    ratio = r["stream_over_non_stream"]
    assert ratio["stream_model"] == STREAM and ratio["non_stream_model"] == PLAIN
    # which points pass the latency budget depends on this (noisy) machine: check the ratio for whatever happened
    stream_qps, plain_qps = stream["highest_sustained_qps"], plain["highest_sustained_qps"]
    if plain_qps is None:
        assert ratio["value"] is None and ratio["reason"]
    else:  # 0.0 when the streaming model sustained no point
        assert ratio["value"] == pytest.approx((stream_qps or 0.0) / plain_qps)
    assert r["config"]["p99_e2e_ms"] == 2500 and r["config"]["max_new_tokens"] == 8

    # the markdown table on stdout
    assert f"| {PLAIN} | 1 |" in proc.stdout and f"| {STREAM} | 1 |" in proc.stdout
    assert "highest sustained QPS" in proc.stdout

    # the picture of the sweep: beside the JSON, a real image
    png = tmp_path / "cmp.png"
    pixels = matplotlib.image.imread(str(png))
    assert png.stat().st_size > 20_000 and pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05
    # drawn from the JSON: one p99 e2e line per model against offered QPS, the budget marked; TTFT for the
    # streaming model only
    fig = plots.sweep_figure(r)
    e2e_ax, ttft_ax = fig.axes
    lines = {line.get_label(): line for line in e2e_ax.get_lines()}
    for name, m in r["models"].items():
        offered = [p["offered_qps"] if p["offered_qps"] is not None else p["qps"] for p in m["points"]]
        assert list(lines[name].get_xdata()) == offered, name
        assert list(lines[name].get_ydata()) == [p["e2e_p99_ms"] for p in m["points"]], name
    assert list(lines["budget: p99 e2e <= 2500 ms"].get_ydata()) == [2500, 2500]
    ttft = {line.get_label(): list(line.get_ydata()) for line in ttft_ax.get_lines()}
    assert ttft[f"{STREAM} p99"] == [p["ttft_p99_ms"] for p in stream["points"]]
    assert not any(label.split()[0] == PLAIN for label in ttft) and f"no TTFT for {PLAIN}" in ttft_ax.get_title()


def test_a_point_over_budget_stops_that_models_sweep(server, tmp_path):
    out = tmp_path / "breach.json"
    proc = compare("--url", server.grpc_url, "--metrics-url", server.metrics_url, "--qps", "1,2",
                   "--duration", 1, *SMALL, "--p99-e2e-ms", 0.001, "--output-json", out)
    assert proc.returncode == 0, explain(proc)  # a measurement, not a gate
    r = json.loads(out.read_text())
    for name in (PLAIN, STREAM):
        m = r["models"][name]
        assert len(m["points"]) == 1 and m["points"][0]["qps"] == 1.0, name
        p = m["points"][0]
        assert p["within_budget"] is False and p["completed"] == p["scheduled"] >= 1
        assert any("p99_e2e_ms" in f for f in p["budget_failures"])
        assert m["stopped_after_qps"] == 1.0 and m["highest_sustained_qps"] is None
    assert r["stream_over_non_stream"]["value"] is None and r["stream_over_non_stream"]["reason"]
    assert "none" in proc.stdout
    for name in (PLAIN, STREAM):  # each point over budget says why, on stdout
        assert f"- {name} @ 1 QPS: p99_e2e_ms: measured " in proc.stdout and " > 0.001" in proc.stdout


def test_usage_and_connection_errors_exit_2(tmp_path):
    (port,) = free_ports(1)
    out = tmp_path / "none.json"
    proc = compare("--url", f"127.0.0.1:{port}", "--metrics-url", "none", "--ready-timeout", 0.5,
                   "--output-json", out, timeout=60)
    assert proc.returncode == 2, explain(proc)
    assert "not ready" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing was measured
    for bad in (["--qps", "4,2"], ["--qps", "0"], ["--qps", "x"], ["--models", "a,a"], ["--duration", "0"]):
        proc = compare(*bad, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (bad, explain(proc))


def test_verdict_helpers():
    tool = tool_module
    pts = [{"qps": q, "within_budget": ok} for q, ok in ((2.0, True), (4.0, False), (8.0, True))]
    assert tool.highest_sustained(pts) == 2.0  # a pass above a failed point does not count
    assert tool.highest_sustained(pts[1:]) is None and tool.highest_sustained([]) is None

    def models(s, n, s_cap=False, n_cap=False):
        return {"a": {"streaming": False, "highest_sustained_qps": n, "capped_by_sweep": n_cap},
                "b": {"streaming": True, "highest_sustained_qps": s, "capped_by_sweep": s_cap}}

    r = tool.stream_ratio(models(8.0, 2.0))
    assert (r["stream_model"], r["non_stream_model"], r["value"], r["bound"]) == ("b", "a", 4.0, "exact")
    assert tool.stream_ratio(models(8.0, 2.0, s_cap=True))["bound"] == "lower"
    assert tool.stream_ratio(models(4.0, 4.0, True, True))["bound"] == "unknown"
    assert tool.stream_ratio(models(None, 2.0))["value"] == 0.0
    assert tool.stream_ratio(models(2.0, None))["value"] is None
    one = {"a": {"streaming": True, "highest_sustained_qps": 1.0, "capped_by_sweep": False}}
    assert tool.stream_ratio(one)["value"] is None and "exactly one" in tool.stream_ratio(one)["reason"]
