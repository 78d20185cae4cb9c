"""The client tools (tools/*.py, scripts/release_check.sh) against a real tritonserver on CPU (tiny preset).

One server for the module. Every tool runs as a subprocess, as an operator runs it, and the assertions are on
numbers: the load test's counts against Triton's own counters read by this test for the same window, the late
send it was made to make, exit statuses, the warmup's per-batch-size statistics, the power monitor's nulls
without a GPU, and a headless Locust run with zero failures.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from tests.integration.triton_server import (REPO_ROOT, TritonServer, counters, explain, free_ports,
                                             settled_counters)

pytestmark = pytest.mark.integration

PLAIN, STREAM = "gpt_large", "gpt_large_stream"
TOOLS = REPO_ROOT / "tools"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_nvidia_gpu() -> bool:
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


HAS_GPU = _has_nvidia_gpu()


@pytest.fixture(scope="module")
def server():
    # With a GPU, Triton refreshes nv_energy_consumption every --metrics-interval-ms (2 s by default): refresh it
    # often enough that the warmup's short timed window sees it advance.
    extra = ["--metrics-interval-ms=20"] if HAS_GPU else []
    with TritonServer(REPO_ROOT / "model_repository", models=[PLAIN, STREAM], extra_args=extra,
                      startup_timeout=240) as srv:
        yield srv


def run(args, timeout=120, env=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([str(a) for a in args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


def tool(name, *args, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, TOOLS / f"{name}.py", *args], **kwargs)


def server_args(server):
    return ["--url", server.grpc_url, "--metrics-url", server.metrics_url]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------- load test
def test_load_test_counts_equal_triton_statistics(server, tmp_path):
    out = tmp_path / "lt.json"
    before = counters(server, PLAIN)[PLAIN]
    proc = tool("load_test", *server_args(server), "--model", PLAIN, "--target-qps", 8, "--duration", 3,
                "--seed", 7, "--prompt-len-min", 8, "--prompt-len-max", 48, "--max-new-tokens", 12,
                "--output-json", out)
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    after = settled_counters(server, {PLAIN: before}, {PLAIN: r["completed"]})[PLAIN]

    assert r["scheduled"] > 5 and r["completed"] == r["scheduled"] and r["failed"] == 0
    assert r["streaming"] is False and r["ttft_ms"] is None and r["tpot_ms"] is None
    assert r["total_output_tokens"] == 12 * r["completed"]  # end id ignored: exactly max-new-tokens each
    # the same window as Triton sees it: this test's own reading, and the tool's
    assert after[0] - before[0] == r["completed"]
    assert after[1] - before[1] == r["total_output_tokens"]
    assert r["server"]["nv_inference_request_success"] == r["completed"]
    assert r["server"]["gpt_generated_tokens_total"] == r["total_output_tokens"]
    assert r["server"]["statistics_api"]["success_count"] == r["completed"]
    e2e = r["e2e_ms"]
    assert e2e["count"] == r["completed"] and 0 < e2e["p50"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"]
    assert r["duration_s"] > 0
    assert r["request_throughput"] == pytest.approx(r["completed"] / r["duration_s"])
    assert r["output_throughput"] == pytest.approx(r["total_output_tokens"] / r["duration_s"])

    rows = read_csv(tmp_path / "lt.requests.csv")
    assert len(rows) == r["scheduled"] and {row["status"] for row in rows} == {"ok"}
    assert sum(int(row["output_tokens"]) for row in rows) == r["total_output_tokens"]
    assert (tmp_path / "lt.png").read_bytes()[:8] == PNG_MAGIC


def test_streaming_load_test_reports_ttft_tpot_itl(server, tmp_path):
    out = tmp_path / "st.json"
    before = counters(server, STREAM)[STREAM]
    proc = tool("load_test", *server_args(server), "--model", STREAM, "--target-qps", 8, "--duration", 2,
                "--seed", 3, "--prompt-len-min", 8, "--prompt-len-max", 48, "--max-new-tokens", 10,
                "--output-json", out, "--no-png")
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    after = settled_counters(server, {STREAM: before}, {STREAM: r["completed"]})[STREAM]

    assert r["streaming"] is True and r["completed"] == r["scheduled"] > 3 and r["failed"] == 0
    assert after[0] - before[0] == r["completed"] == r["server"]["nv_inference_request_success"]
    assert after[1] - before[1] == r["total_output_tokens"] == 10 * r["completed"]
    assert r["token_count_mismatches"] == 0
    assert r["ttft_ms"]["count"] == r["tpot_ms"]["count"] == r["completed"]
    assert r["itl_ms"]["count"] == 9 * r["completed"]  # one gap between each of the 10 tokens
    for row in read_csv(tmp_path / "st.requests.csv"):
        ttft, tpot, e2e = float(row["ttft_ms"]), float(row["tpot_ms"]), float(row["e2e_ms"])
        assert 0 < ttft <= e2e
        assert ttft + 9 * tpot == pytest.approx(e2e, abs=0.01)  # TPOT = (e2e - TTFT) / (tokens - 1)


def test_a_delayed_send_is_reported_late_and_timed_from_its_schedule(server, tmp_path):
    out = tmp_path / "late.json"
    proc = tool("load_test", *server_args(server), "--model", PLAIN, "--arrival", "constant", "--target-qps", 5,
                "--num-requests", 4, "--prompt-len-min", 8, "--prompt-len-max", 8, "--max-new-tokens", 4,
                "--inject-send-delay-ms", 150, "--inject-delay-index", 1, "--late-threshold-ms", 50,
                "--output-json", out, "--no-png")
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    assert r["completed"] == 4
    assert 1 in r["late_indices"] and r["late"] >= 1
    row = read_csv(tmp_path / "late.requests.csv")[1]
    assert row["late"] == "1" and float(row["send_lag_ms"]) >= 150
    assert float(row["e2e_ms"]) >= 150  # latency counts from the scheduled send, not the actual one
    assert r["send_lag_ms"]["max"] >= 150
    assert "late" in proc.stderr  # the run warns that the offered load was lower than asked


def test_slo_breach_and_error_budget_set_exit_status_1(server, tmp_path):
    out = tmp_path / "slo.json"
    proc = tool("load_test", *server_args(server), "--model", PLAIN, "--target-qps", 10, "--num-requests", 3,
                "--prompt-len-min", 8, "--prompt-len-max", 8, "--max-new-tokens", 4, "--slo", "e2e_ms=0.001",
                "--output-json", out, "--no-png")
    assert proc.returncode == 1, explain(proc)
    r = json.loads(out.read_text())
    assert r["passed"] is False and r["completed"] == 3 and r["goodput"]["good_requests"] == 0
    assert r["goodput"]["attainment"] == 0 and any("attainment" in f for f in r["slo_check"]["failures"])

    # prompts that do not fit the context with max_tokens: every request is rejected with INVALID_ARG
    out = tmp_path / "errors.json"
    proc = tool("load_test", *server_args(server), "--model", PLAIN, "--target-qps", 10, "--num-requests", 2,
                "--prompt-len-min", 1000, "--prompt-len-max", 1000, "--max-new-tokens", 100,
                "--output-json", out, "--no-png")
    assert proc.returncode == 1, explain(proc)
    r = json.loads(out.read_text())
    assert r["failed"] == 2 and r["failed_by_code"] == {"INVALID_ARGUMENT": 2} and r["error_rate"] == 1.0


def test_usage_and_connection_errors_exit_2(tmp_path):
    (port,) = free_ports(1)
    for name in ("load_test", "warmup"):
        proc = tool(name, "--url", f"127.0.0.1:{port}", "--ready-timeout", "0.5", "--metrics-url", "none"
                    if name == "load_test" else f"http://127.0.0.1:{port}/metrics")
        assert proc.returncode == 2, explain(proc)
        assert "not ready" in proc.stderr and "Traceback" not in proc.stderr
    proc = tool("load_test", "--slo", "latency=5")
    assert proc.returncode == 2 and "bad SLO item" in proc.stderr


# ---------------------------------------------------------------------------------------------------- warmup
def test_warmup_reports_every_batch_size_and_checks(server, tmp_path):
    out = tmp_path / "warmup.json"
    before = counters(server, PLAIN)[PLAIN]
    proc = tool("warmup", *server_args(server), "--model", PLAIN, "--iters", 2, "--warmup", 1,
                "--prompt-len", 32, "--max-tokens", 4, "--output-json", out)
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    assert r["passed"] is True and all(r["checks"].values())
    assert r["determinism"]["passed"] is True
    assert sorted(r["batch_sizes"], key=int) == ["1", "2", "4", "8", "16"]
    for key, b in r["batch_sizes"].items():
        n = int(key)
        assert b["requests"] == 2 * n and b["output_tokens"] == 2 * n * 4
        lat = b["latency_ms"]
        assert lat["count"] == 2 * n
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
        assert b["output_tokens_per_s"] > 0
    assert r["total_output_tokens"] == 4 * 2 * (1 + 2 + 4 + 8 + 16)
    assert r["server"]["gpt_generated_tokens_total"] == r["total_output_tokens"]  # the timed window only
    after = counters(server, PLAIN)[PLAIN]
    assert after[1] - before[1] == r["total_output_tokens"] + 4 * 2 + 4 * (1 + 2 + 4 + 8 + 16)  # + probe, warm-up
    assert r["max_abs_diff"] == pytest.approx(server.metric("gpt_max_abs_diff", model=PLAIN))
    if not HAS_GPU:
        assert r["tokens_per_joule"] is None and r["energy_j"] is None
        assert r["tokens_per_joule_reason"] and "nv_energy_consumption" in r["tokens_per_joule_reason"]
    else:  # a GPU host: an energy counter (Triton's, else local NVML) advanced over the timed window
        assert r["tokens_per_joule"] is not None and r["tokens_per_joule"] > 0, r["tokens_per_joule_reason"]
        assert r["tokens_per_joule"] == pytest.approx(r["total_output_tokens"] / r["energy_j"])


# ---------------------------------------------------------------------------------------------------- power monitor
@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without an NVIDIA GPU")
def test_power_monitor_without_gpu_says_so_and_writes_nulls(tmp_path):
    out = tmp_path / "power.json"
    proc = tool("power_monitor", "--output-json", out, "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3, explain(proc)  # the command's exit status
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GPU" in lines[0] and "Traceback" not in proc.stderr
    r = json.loads(out.read_text())
    assert r["gpu_available"] is False and r["command_exit_code"] == 3
    for key in ("gpu", "energy_j", "avg_power_w", "max_power_w", "max_temperature_c", "tokens_per_joule"):
        assert r[key] is None, key
    assert r["reason"]


# ---------------------------------------------------------------------------------------------------- locust
def test_headless_locust_run_has_zero_failures(server, tmp_path):
    locust = Path(sys.executable).parent / "locust"
    cmd = [locust] if locust.exists() else [sys.executable, "-m", "locust"]
    before = counters(server, PLAIN)[PLAIN]
    proc = run([*cmd, "-f", TOOLS / "locustfile.py", "--headless", "-u", 4, "-r", 4, "-t", "5s",
                "--host", server.grpc_url, "--only-summary", "--csv", tmp_path / "locust",
                "--model", PLAIN, "--prompt-len-min", 8, "--prompt-len-max", 32, "--max-new-tokens", 8,
                "--slo-fail-ratio", 0], timeout=90)
    assert proc.returncode == 0, explain(proc)
    rows = {row["Name"]: row for row in read_csv(tmp_path / "locust_stats.csv")}
    assert int(rows[PLAIN]["Request Count"]) > 0
    assert int(rows[PLAIN]["Failure Count"]) == 0
    assert float(rows[PLAIN]["Average Content Size"]) == 8  # response_length = output tokens
    assert counters(server, PLAIN)[PLAIN][0] - before[0] >= int(rows[PLAIN]["Request Count"])


# ---------------------------------------------------------------------------------------------------- release check
def test_release_check_writes_artifacts_and_fails_on_slo_breach(server, tmp_path):
    env = {"GRPC_URL": server.grpc_url, "METRICS_URL": server.metrics_url, "PYTHON": sys.executable,
           "DURATION": "2", "WARMUP_ITERS": "1", "WARMUP_ROUNDS": "0", "WARMUP_PROMPT_LEN": "32",
           "WARMUP_MAX_TOKENS": "4", "ARTIFACTS_DIR": str(tmp_path / "ok")}
    proc = run(["bash", REPO_ROOT / "scripts" / "release_check.sh"], env=env)
    assert proc.returncode == 0, explain(proc)
    art = tmp_path / "ok"
    for name in ("warmup.json", "load_test.json", "load_test.requests.csv", "load_test.png", "power.json",
                 "summary.txt"):
        assert (art / name).is_file(), name
    lt = json.loads((art / "load_test.json").read_text())
    c = lt["config"]  # the runbook's envelope
    assert (c["target_qps"], c["prompt_len_min"], c["prompt_len_max"], c["max_new_tokens"]) == (4, 128, 512, 256)
    assert lt["passed"] and lt["total_output_tokens"] == 256 * lt["completed"]

    env.update(SLO="e2e_ms=0.001", DURATION="1", ARTIFACTS_DIR=str(tmp_path / "breach"))
    proc = run(["bash", REPO_ROOT / "scripts" / "release_check.sh"], env=env)
    assert proc.returncode == 1, explain(proc)
    assert "load test: FAILED" in (tmp_path / "breach" / "summary.txt").read_text()
