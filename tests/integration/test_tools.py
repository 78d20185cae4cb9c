"""The client tools (tools/*.py, scripts/release_check.sh) against a real tritonserver on CPU (tiny preset).

One server for the module, on free (non-default) ports. Every tool runs as a subprocess, as an operator runs it,
finding the server only through the environment `make serve` reads (GRPC_PORT, HTTP_PORT, METRICS_PORT): no
--url, no --metrics-url. The assertions are on numbers: the load test's counts against Triton's own counters read
by this test for the same window, the late send it was made to make, exit statuses and the reasons printed with
them, the warmup's per-batch-size statistics, the power monitor's token count without a GPU, and a headless
Locust run whose request count equals Triton's success counter.
"""
from __future__ import annotations

import csv
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pynvml
import pytest

from tests.integration.triton_server import (REPO_ROOT, TritonServer, counters, explain, free_ports,
                                             settled_counters)

pytestmark = pytest.mark.integration

PLAIN, STREAM = "gpt_large", "gpt_large_stream"
TOOLS = REPO_ROOT / "tools"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCATING = ("HOST", "GRPC_PORT", "HTTP_PORT", "METRICS_PORT", "GRPC_URL", "METRICS_URL")


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


def server_env(server, **overrides) -> dict:
    """The variables `make serve` reads, pointing at the test's server: how the tools find it here."""
    env = {"GRPC_PORT": server.grpc_port, "HTTP_PORT": server.http_port, "METRICS_PORT": server.metrics_port}
    return {k: str(v) for k, v in dict(env, **overrides).items()}


def run(args, timeout=120, env=None) -> subprocess.CompletedProcess:
    """args run to completion; one still running after `timeout` seconds fails the test with its threads' stacks
    (Python's faulthandler prints them on SIGABRT), so a hang says where it hangs."""
    full_env = {k: v for k, v in os.environ.items() if k not in LOCATING}
    # `python tools/X.py` imports the `tools` package: installed (editable) by make setup, or the repo root here
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    full_env["PYTHONFAULTHANDLER"] = "1"
    full_env.update(env or {})
    args = [str(a) for a in args]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(args)} still ran after {timeout} s; its stderr, stacks last:\n{err[-8000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def tool(name, *args, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, TOOLS / f"{name}.py", *args], **kwargs)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png_has_a_picture(path: Path):
    """A real picture: a PNG of some size whose pixels are not all one colour."""
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 20_000
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05


# ---------------------------------------------------------------------------------------------------- load test
def test_load_test_counts_equal_triton_statistics(server, tmp_path):
    out = tmp_path / "lt.json"
    before = counters(server, PLAIN)[PLAIN]
    proc = tool("load_test", "--model", PLAIN, "--target-qps", 8, "--duration", 3,
                "--seed", 7, "--prompt-len-min", 8, "--prompt-len-max", 48, "--max-new-tokens", 12,
                "--output-json", out, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    after = settled_counters(server, {PLAIN: before}, {PLAIN: r["completed"]})[PLAIN]

    # found through the environment, and says so
    assert f"server grpc 127.0.0.1:{server.grpc_port} (from GRPC_PORT)" in proc.stderr
    assert f"metrics {server.metrics_url} (from server host, METRICS_PORT)" in proc.stderr
    assert r["url"] == server.grpc_url and r["metrics_url"] == server.metrics_url
    # no --slo: the verdict says that no SLO was checked
    assert r["slo_checked"] is False
    assert "result: PASSED -- no SLO checked" in proc.stdout, proc.stdout

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
    client = r["client"]  # the client's own CPU over the run
    assert client["wall_s"] > 0 and 0 <= client["loop_thread_busy"] <= client["process_cpu_cores"] + 0.05

    rows = read_csv(tmp_path / "lt.requests.csv")
    assert len(rows) == r["scheduled"] and {row["status"] for row in rows} == {"ok"}
    assert sum(int(row["output_tokens"]) for row in rows) == r["total_output_tokens"]
    assert_png_has_a_picture(tmp_path / "lt.png")


def test_streaming_load_test_reports_ttft_tpot_itl(server, tmp_path):
    out = tmp_path / "st.json"
    before = counters(server, STREAM)[STREAM]
    proc = tool("load_test", "--model", STREAM, "--target-qps", 8, "--duration", 2,
                "--seed", 3, "--prompt-len-min", 8, "--prompt-len-max", 48, "--max-new-tokens", 10,
                "--output-json", out, "--no-png", env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    after = settled_counters(server, {STREAM: before}, {STREAM: r["completed"]})[STREAM]

    assert r["streaming"] is True and r["completed"] == r["scheduled"] > 3 and r["failed"] == 0
    assert after[0] - before[0] == r["completed"] == r["server"]["nv_inference_request_success"]
    assert after[1] - before[1] == r["total_output_tokens"] == 10 * r["completed"]
    assert r["token_count_mismatches"] == 0  # ids summed over every response == the server's num_output_tokens
    assert r["ttft_ms"]["count"] == r["tpot_ms"]["count"] == r["completed"]
    rows = read_csv(tmp_path / "st.requests.csv")
    # one gap between consecutive token-carrying responses (a response may carry several tokens)
    assert r["itl_ms"]["count"] == sum(int(row["token_responses"]) - 1 for row in rows)
    for row in rows:
        ttft, tpot, e2e = float(row["ttft_ms"]), float(row["tpot_ms"]), float(row["e2e_ms"])
        assert 1 <= int(row["token_responses"]) <= 10 and int(row["output_tokens"]) == 10
        assert 0 < ttft <= e2e
        assert ttft + 9 * tpot == pytest.approx(e2e, abs=0.01)  # TPOT = (e2e - TTFT) / (tokens - 1)


def test_a_delayed_send_is_reported_late_next_to_the_verdict(server, tmp_path):
    out = tmp_path / "late.json"
    proc = tool("load_test", "--model", PLAIN, "--arrival", "constant", "--target-qps", 5,
                "--num-requests", 4, "--prompt-len-min", 8, "--prompt-len-max", 8, "--max-new-tokens", 4,
                "--inject-send-delay-ms", 150, "--inject-delay-index", 1, "--late-threshold-ms", 50,
                "--output-json", out, "--no-png", env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    assert r["completed"] == 4
    assert 1 in r["late_indices"] and r["late"] >= 1
    row = read_csv(tmp_path / "late.requests.csv")[1]
    assert row["late"] == "1" and float(row["send_lag_ms"]) >= 150
    assert float(row["e2e_ms"]) >= 150  # latency counts from the scheduled send, not the actual one
    assert r["send_lag_ms"]["max"] >= 150
    # the verdict says the client fell behind (the offered load was lower than asked)
    verdict = next(line for line in proc.stdout.splitlines() if "result:" in line)
    assert "client fell behind its schedule" in verdict and "offered load was lower" in verdict
    assert any("client fell behind" in note for note in r["client"]["notes"])


def test_slo_breach_and_error_budget_set_exit_status_1_with_the_reason(server, tmp_path):
    out = tmp_path / "slo.json"
    proc = tool("load_test", "--model", PLAIN, "--target-qps", 10, "--num-requests", 3,
                "--prompt-len-min", 8, "--prompt-len-max", 8, "--max-new-tokens", 4, "--slo", "e2e_ms=0.001",
                "--output-json", out, env=server_env(server))
    assert proc.returncode == 1, explain(proc)
    r = json.loads(out.read_text())
    assert r["passed"] is False and r["completed"] == 3 and r["goodput"]["good_requests"] == 0
    assert r["goodput"]["attainment"] == 0 and any("attainment" in f for f in r["slo_check"]["failures"])
    assert "FAILED: SLO attainment 0.00% < 99.00%" in proc.stdout and "result: FAILED" in proc.stdout
    # the picture: its title (kept in the PNG's Title chunk too) says why the run failed
    png = tmp_path / "slo.png"
    assert_png_has_a_picture(png)
    from PIL import Image

    assert "FAILED: SLO attainment 0.00%" in Image.open(png).text["Title"]

    # prompts that do not fit the context with max_tokens: every request is rejected with INVALID_ARG
    out = tmp_path / "errors.json"
    proc = tool("load_test", "--model", PLAIN, "--target-qps", 10, "--num-requests", 2,
                "--prompt-len-min", 1000, "--prompt-len-max", 1000, "--max-new-tokens", 100,
                "--output-json", out, "--no-png", env=server_env(server))
    assert proc.returncode == 1, explain(proc)
    r = json.loads(out.read_text())
    assert r["failed"] == 2 and r["failed_by_code"] == {"INVALID_ARGUMENT": 2} and r["error_rate"] == 1.0
    assert "FAILED: error rate 100.00% > --max-error-rate 1.00%" in proc.stdout


def test_no_server_shows_the_wait_then_a_clear_timeout_and_exit_2(tmp_path):
    (port,) = free_ports(1)
    for name in ("load_test", "warmup"):
        proc = tool(name, "--ready-timeout", "1.5", env={"GRPC_PORT": str(port)})
        assert proc.returncode == 2, explain(proc)
        assert f"{name}: waiting for READY at 127.0.0.1:{port} (0 s of 1.5): " in proc.stderr
        assert f"{name}: error: server at 127.0.0.1:{port} not ready after 1.5 s: " in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = tool("load_test", "--slo", "latency=5")
    assert proc.returncode == 2 and "bad SLO item" in proc.stderr
    proc = tool("warmup", env={"METRICS_PORT": "x"})
    assert proc.returncode == 2 and "METRICS_PORT='x' is not a port number" in proc.stderr


# ---------------------------------------------------------------------------------------------------- warmup
def test_warmup_reports_every_batch_size_and_checks(server, tmp_path):
    out = tmp_path / "warmup.json"
    before = counters(server, PLAIN)[PLAIN]
    proc = tool("warmup", "--model", PLAIN, "--iters", 2, "--warmup", 1,
                "--prompt-len", 32, "--max-tokens", 4, "--output-json", out, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    assert f"server grpc 127.0.0.1:{server.grpc_port} (from GRPC_PORT)" in proc.stderr
    r = json.loads(out.read_text())
    assert r["passed"] is True and all(r["checks"].values()) and r["check_failures"] == {}
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
        assert r["tokens_per_joule_reason"] and "exports no nv_energy_consumption" in r["tokens_per_joule_reason"]
    else:  # a GPU host: an energy counter (Triton's, else local NVML) advanced over the timed window
        assert r["tokens_per_joule"] is not None and r["tokens_per_joule"] > 0, r["tokens_per_joule_reason"]
        assert r["tokens_per_joule"] == pytest.approx(r["total_output_tokens"] / r["energy_j"])


def test_warmup_covers_the_stream_models_64_slots_by_default(server, tmp_path):
    out = tmp_path / "warmup.json"
    proc = tool("warmup", "--model", STREAM, "--iters", 1, "--warmup", 0, "--prompt-len", 8, "--max-tokens", 2,
                "--output-json", out, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    r = json.loads(out.read_text())
    assert r["config"]["batch_sizes"] == [1, 2, 4, 8, 16, 32, 64]  # the stream model's max_batch_size: 64
    assert r["passed"] and r["total_output_tokens"] == 2 * (1 + 2 + 4 + 8 + 16 + 32 + 64)


def test_warmup_over_http_finds_the_server_through_http_port(server, tmp_path):
    out = tmp_path / "warmup.json"
    proc = tool("warmup", "--protocol", "http", "--model", PLAIN, "--iters", 1, "--warmup", 0, "--batch-sizes", "1,2",
                "--prompt-len", 8, "--max-tokens", 2, "--output-json", out, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    assert f"server http {server.http_url} (from HTTP_PORT)" in proc.stderr
    r = json.loads(out.read_text())
    assert r["url"] == server.http_url and r["passed"] and r["total_output_tokens"] == 2 * (1 + 2)


def test_warmup_prints_the_reason_of_a_failed_check(server, tmp_path):
    # the server answers, its metrics endpoint is not where METRICS_PORT says
    (wrong,) = free_ports(1)
    out = tmp_path / "warmup.json"
    proc = tool("warmup", "--model", STREAM, "--iters", 1, "--warmup", 0, "--batch-sizes", "1,2",
                "--prompt-len", 8, "--max-tokens", 2, "--output-json", out,
                env=server_env(server, METRICS_PORT=wrong))
    assert proc.returncode == 1, explain(proc)
    unreachable = f"metrics endpoint http://127.0.0.1:{wrong}/metrics unreachable"
    assert f"check max_abs_diff_reported: FAILED: {unreachable}" in proc.stdout, proc.stdout
    assert "check all_requests_succeeded: ok" in proc.stdout and "result: FAILED" in proc.stdout
    r = json.loads(out.read_text())
    assert r["checks"]["max_abs_diff_reported"] is False and unreachable in r["check_failures"]["max_abs_diff_reported"]
    # tokens per joule names the real cause, not a server without GPU metrics
    assert unreachable in r["tokens_per_joule_reason"] and "exports no" not in r["tokens_per_joule_reason"]


# ---------------------------------------------------------------------------------------------------- power monitor
@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without an NVIDIA GPU")
def test_power_monitor_without_gpu_says_so_and_writes_nulls(tmp_path):
    out = tmp_path / "power.json"
    proc = tool("power_monitor", "--metrics-url", "none", "--output-json", out, "--",
                sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3, explain(proc)  # the command's exit status
    gpu_lines = [line for line in proc.stderr.splitlines() if "GPU" in line]
    assert len(gpu_lines) == 1 and "not measured" in gpu_lines[0] and "Traceback" not in proc.stderr
    r = json.loads(out.read_text())
    assert r["gpu_available"] is False and r["command_exit_code"] == 3
    for key in ("gpu", "energy_j", "avg_power_w", "max_power_w", "max_temperature_c", "tokens_per_joule",
                "generated_tokens"):
        assert r[key] is None, key
    assert r["reason"] and r["generated_tokens_reason"] == "not read (--metrics-url none)"


def test_power_monitor_counts_generated_tokens_from_the_metrics_endpoint(server, tmp_path):
    out, lt = tmp_path / "power.json", tmp_path / "lt.json"
    before = counters(server, STREAM)[STREAM]
    proc = tool("power_monitor", "--model", STREAM, "--interval", 0.2, "--output-json", out, "--",
                sys.executable, TOOLS / "load_test.py", "--model", STREAM, "--num-requests", 4, "--target-qps", 8,
                "--prompt-len-min", 8, "--prompt-len-max", 8, "--max-new-tokens", 5, "--no-png", "--quiet",
                "--output-json", lt, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    r, load = json.loads(out.read_text()), json.loads(lt.read_text())
    assert r["metrics_url"] == server.metrics_url
    assert r["generated_tokens"] == load["total_output_tokens"] == 20
    assert counters(server, STREAM)[STREAM][1] - before[1] == 20
    if not HAS_GPU:
        assert r["gpu_available"] is False and r["tokens_per_joule"] is None and r["energy_j"] is None


# ---------------------------------------------------------------------------------------------------- locust
def locust_command():
    locust = Path(sys.executable).parent / "locust"
    return [locust] if locust.exists() else [sys.executable, "-m", "locust"]


def test_locust_request_count_equals_tritons_on_the_stream_model(server, tmp_path):
    before = counters(server, STREAM)[STREAM]
    proc = run([*locust_command(), "-f", TOOLS / "locustfile.py", "--headless", "-u", 4, "-r", 4, "-t", "4s",
                "--stop-timeout", 60, "--only-summary", "--csv", tmp_path / "locust",
                "--model", STREAM, "--prompt-len-min", 8, "--prompt-len-max", 32, "--max-new-tokens", 8,
                "--slo-fail-ratio", 0, "--slo-ttft-p99-ms", 60000], timeout=120, env=server_env(server))
    assert proc.returncode == 0, explain(proc)
    rows = {row["Name"]: row for row in read_csv(tmp_path / "locust_stats.csv")}
    count = int(rows[STREAM]["Request Count"])
    assert count > 0 and int(rows[STREAM]["Failure Count"]) == 0
    assert float(rows[STREAM]["Average Content Size"]) == 8  # response_length = output tokens
    # TTFT is not a request: the Aggregated row counts real requests only, and TTFT has a table of its own
    assert set(rows) == {STREAM, "Aggregated"} and int(rows["Aggregated"]["Request Count"]) == count
    ttft = read_csv(tmp_path / "locust_ttft.csv")
    assert [(t["Name"], int(t["Request Count"])) for t in ttft] == [(STREAM, count)]
    assert "requests were still running" not in proc.stderr  # --stop-timeout let every request finish
    after = settled_counters(server, {STREAM: before}, {STREAM: count})[STREAM]
    assert after[0] - before[0] == count  # the requests Locust reports are the requests Triton served
    assert after[1] - before[1] == 8 * count


def test_locustfile_lists_its_own_options_in_help():
    proc = tool("locustfile", "--help", timeout=60)
    assert proc.returncode == 0, explain(proc)
    for flag in ("--model", "--max-new-tokens", "--slo-p99-ms", "--slo-ttft-p99-ms", "--step-load", "--headless"):
        assert f"{flag} " in proc.stdout, flag


# ---------------------------------------------------------------------------------------------------- release check
def test_release_check_writes_artifacts_and_fails_on_slo_breach(server, tmp_path):
    env = server_env(server, PYTHON=sys.executable, DURATION="2", WARMUP_ITERS="1", WARMUP_ROUNDS="0",
                     WARMUP_PROMPT_LEN="32", WARMUP_MAX_TOKENS="4", ARTIFACTS_DIR=str(tmp_path / "ok"))
    proc = run(["bash", REPO_ROOT / "scripts" / "release_check.sh"], env=env)
    assert proc.returncode == 0, explain(proc)
    assert f"release_check: server grpc 127.0.0.1:{server.grpc_port} (from GRPC_PORT)" in proc.stdout
    art = tmp_path / "ok"
    for name in ("warmup.json", "load_test.json", "load_test.requests.csv", "load_test.png", "power.json",
                 "summary.txt"):
        assert (art / name).is_file(), name
    lt = json.loads((art / "load_test.json").read_text())
    c = lt["config"]  # the runbook's envelope
    assert (c["target_qps"], c["prompt_len_min"], c["prompt_len_max"], c["max_new_tokens"]) == (4, 128, 512, 256)
    assert lt["passed"] and lt["total_output_tokens"] == 256 * lt["completed"]
    assert json.loads((art / "power.json").read_text())["generated_tokens"] == lt["total_output_tokens"]

    env.update(SLO="e2e_ms=0.001", DURATION="1", ARTIFACTS_DIR=str(tmp_path / "breach"))
    proc = run(["bash", REPO_ROOT / "scripts" / "release_check.sh"], env=env)
    assert proc.returncode == 1, explain(proc)
    assert "load test: FAILED" in (tmp_path / "breach" / "summary.txt").read_text()


def test_release_check_without_a_server_shows_the_wait_and_exits_2(tmp_path):
    (port,) = free_ports(1)
    proc = run(["bash", REPO_ROOT / "scripts" / "release_check.sh"], timeout=60,
               env={"GRPC_PORT": str(port), "READY_TIMEOUT": "6", "PYTHON": sys.executable,
                    "ARTIFACTS_DIR": str(tmp_path)})
    assert proc.returncode == 2, explain(proc)
    # not a terminal (a log): one line every 5 s while it waits, then why it gave up
    waits = [line for line in proc.stderr.splitlines() if "waiting for READY" in line]
    assert [w.split("(")[1].split(")")[0] for w in waits] == ["0 s of 6", "5 s of 6"], proc.stderr
    assert all(w.startswith(f"warmup: waiting for READY at 127.0.0.1:{port} (") for w in waits)
    assert "not ready after 6 s" in proc.stderr and "load test skipped" in proc.stderr


def test_the_wait_is_one_line_rewritten_in_place_on_a_terminal():
    (port,) = free_ports(1)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in LOCATING}
    env.update(PYTHONPATH=str(REPO_ROOT), GRPC_PORT=str(port))
    proc = subprocess.run([sys.executable, TOOLS / "warmup.py", "--ready-timeout", "2"], cwd=REPO_ROOT, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, timeout=60)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    text = seen.decode()
    assert proc.returncode == 2
    assert text.count("\r\x1b[K" + f"warmup: waiting for READY at 127.0.0.1:{port} (") >= 2  # rewritten in place
    assert "not ready after 2 s" in text


# ---------------------------------------------------------------------------------------------------- aiperf
AIPERF_DIR = TOOLS / "aiperf"


def aiperf_binary():
    """NVIDIA's aiperf, in its own virtualenv (its pins clash with this one's): $AIPERF, .venv-aiperf, PATH."""
    for candidate in (os.environ.get("AIPERF"), REPO_ROOT / ".venv-aiperf" / "bin" / "aiperf", shutil.which("aiperf")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_the_aiperf_tokenizer_is_the_servers_byte_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(AIPERF_DIR / "byte-tokenizer" / "tokenizer.json"))
    text = "Hello, world é ✓ \n\t"
    assert tok.get_vocab_size() == 256 and tok.encode(text).ids == list(text.encode("utf-8"))
    assert tok.decode(list(text.encode("utf-8"))) == text


@pytest.mark.skipif(aiperf_binary() is None, reason="aiperf is not installed: python3 -m venv .venv-aiperf && "
                                                    ".venv-aiperf/bin/pip install aiperf==0.13.0 (docs/tools.md)")
@pytest.mark.parametrize("model", [PLAIN, STREAM])
def test_aiperf_recipe_request_count_equals_tritons(server, tmp_path, model):
    """The recipe of docs/tools.md, as written there (the server's HTTP address and the output directory aside)."""
    endpoint = "generate_stream" if model == STREAM else "generate"
    before = counters(server, model)[model]
    proc = run([aiperf_binary(), "profile", "--model", model, "--url", f"http://{server.http_url}",
                "--endpoint-type", "template", "--custom-endpoint", f"/v2/models/{model}/{endpoint}",
                *(["--streaming"] if model == STREAM else []),
                "--extra-inputs", "payload_template:tools/aiperf/triton_generate.json.j2",
                "--extra-inputs", "response_field:text_output", "--tokenizer", "tools/aiperf/byte-tokenizer",
                "--synthetic-input-tokens-mean", 32, "--output-tokens-mean", 8, "--request-count", 12,
                "--concurrency", 2, "--ui-type", "simple", "--output-artifact-dir", tmp_path],
               timeout=300)
    assert proc.returncode == 0, explain(proc)
    r = json.loads((tmp_path / "profile_export_aiperf.json").read_text())
    assert r["request_count"]["avg"] == 12 and r["error_summary"] == []
    after = settled_counters(server, {model: before}, {model: 12})[model]
    assert after[0] - before[0] == 12  # aiperf's requests are the requests Triton served
    assert after[1] - before[1] == 8 * 12  # the template's max_tokens and end_id -1: exactly 8 tokens each
    if model == STREAM:
        ttft = r["time_to_first_token"]
        assert 0 < ttft["avg"] <= r["request_latency"]["max"]
