"""A real Prometheus, loaded with deploy/prometheus/'s configuration and rules, scraping a real tritonserver
(tiny model on CPU) while tools/load_test.py drives gpt_large_stream: the autoscaling signal rises above the
HorizontalPodAutoscaler's target under load and falls back when idle, prometheus-adapter's query (filled in as
the adapter fills it) returns it per pod, every rule evaluates cleanly on the real series, and the dead-engine
alert fires when the server dies.

Short intervals (scrape and evaluate every second) keep the module to about two minutes; the alert's own
`for: 1m` is kept as shipped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.deploy.check_tools import DEPLOY, REPO_ROOT
from tests.deploy.prometheus_server import PrometheusServer
from tests.integration.triton_server import TritonServer, configure, explain

pytestmark = pytest.mark.integration

MODEL = "gpt_large_stream"
NAMESPACE, POD = "gptserve-test", "gptserve-0"  # the labels a Kubernetes scrape would add
STEP_DELAY_MS = 50  # every decode step takes at least this long, so load builds up on any CPU
SLOTS = 16  # fewer than the shipped 64, so the load below fills more than the HPA target of them
SIGNAL = "pod_model:gptserve_slot_demand:ratio"
ADAPTER_METRIC = "gptserve_slot_demand"
SHM_REGION = "/dev/shm/triton_python_backend_shm_region_"


def hpa_target(metric: str) -> float:
    """The HPA's averageValue for ``metric``, as a number (Kubernetes quantity: "750m" = 0.75)."""
    hpa = yaml.safe_load((DEPLOY / "k8s/base/horizontalpodautoscaler.yaml").read_text())
    (value,) = [m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]
                if m["pods"]["metric"]["name"] == metric]
    value = str(value)
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def adapter_query(metric: str) -> str:
    """The adapter's metricsQuery for ``metric`` as it sends it for this pod and the HPA's model selector."""
    rules = yaml.safe_load((DEPLOY / "k8s/prometheus-adapter/config.yaml").read_text())["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric]
    series = rule["seriesQuery"].split("{")[0]
    matchers = f'namespace="{NAMESPACE}",pod=~"{POD}",model="{MODEL}"'
    return (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod"))


def prometheus_config(metrics_target: str) -> dict:
    """deploy/prometheus/prometheus.yml pointed at the test server, with one-second intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [metrics_target], "labels": {"namespace": NAMESPACE, "pod": POD}}]
    return config


def shm_regions_of_group(pgid: int) -> set[Path]:
    """The python backend's /dev/shm regions mapped by the processes of a process group."""
    regions = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                maps = (stat.parent / "maps").read_text()
                regions |= {Path(line.split()[-1]) for line in maps.splitlines() if SHM_REGION in line}
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return regions


def evaluated_rules(prometheus: PrometheusServer, timeout: float = 30) -> list[dict]:
    """Every loaded rule, once each has been evaluated at least once (health no longer "unknown")."""
    deadline = time.monotonic() + timeout
    while True:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        if all(r["health"] != "unknown" for r in rules) or time.monotonic() > deadline:
            return rules
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    cfg = repo / MODEL / "config.pbtxt"
    cfg.write_text(configure(cfg.read_text(), {"step_delay_ms": STEP_DELAY_MS}, max_batch_size=SLOTS))
    with TritonServer(repo, models=[MODEL], startup_timeout=240) as srv:
        yield srv


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    target = server.metrics_url.split("//")[1].split("/")[0]
    with PrometheusServer(prometheus_config(target), tmp_path_factory.mktemp("prometheus")) as prom:
        yield prom


def load_test(server, tmp_path, qps: float, duration: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "tools/load_test.py", "--url", server.grpc_url, "--metrics-url", server.metrics_url,
         "--model", MODEL, "--target-qps", str(qps), "--duration", str(duration), "--prompt-len-min", "16",
         "--prompt-len-max", "64", "--max-new-tokens", "32", "--no-png", "--no-progress", "--quiet",
         "--output-json", str(tmp_path / "load.json")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_slot_demand_rises_above_the_hpa_target_under_load_and_falls_back_when_idle(server, prometheus, tmp_path):
    target = hpa_target(ADAPTER_METRIC)
    assert "gpt_slots{" in server.metrics(), "the model exports no gpt_slots gauge: the slot-demand signal needs it"
    idle = prometheus.wait_for(f"{SIGNAL}{{model='{MODEL}'}}", timeout=30)
    assert idle[0][1] < target, f"idle demand {idle} is not below the target {target}"

    # SLOTS (16) slots, >= 32 steps of >= 50 ms per request: 12 requests/s keep ~19 sequences in the model.
    load = load_test(server, tmp_path, qps=12, duration=15)
    try:
        loaded = prometheus.wait_for(f"{SIGNAL}{{model='{MODEL}'}} > {target}", timeout=40)
        per_pod = prometheus.wait_for(f"{adapter_query(ADAPTER_METRIC)} > {target}", timeout=10)
    finally:
        out, err = load.communicate(timeout=240)
    assert load.returncode in (0, 1), explain(subprocess.CompletedProcess(load.args, load.returncode, out, err))
    assert loaded[0][0]["pod"] == POD and loaded[0][0]["namespace"] == NAMESPACE
    assert [labels for labels, _ in per_pod] == [{"pod": POD}]

    fallen = prometheus.wait_for(f"{SIGNAL}{{model='{MODEL}'}} < {target}", timeout=60)
    assert fallen[0][1] < target
    ttft_p99 = prometheus.wait_for(f"namespace_model:gpt_time_to_first_token_seconds:p99_5m{{model='{MODEL}'}}",
                                   timeout=30)
    assert ttft_p99[0][1] > 0


def test_every_rule_evaluates_without_error_on_the_real_series(server, prometheus):
    prometheus.wait_for('up{job="gptserve"} == 1', timeout=30)  # the rules run on scraped data
    rules = evaluated_rules(prometheus)
    shipped = sum(len(g["rules"]) for f in ("recording_rules.yml", "alert_rules.yml")
                  for g in yaml.safe_load((DEPLOY / "prometheus" / f).read_text())["groups"])
    assert len(rules) == shipped
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken


def test_target_down_alert_fires_when_the_server_dies(server, prometheus):
    prometheus.wait_for('up{job="gptserve"} == 1', timeout=30)
    regions = shm_regions_of_group(server.process.pid)
    os.killpg(server.process.pid, signal.SIGKILL)  # tritonserver and its stubs (their own session)
    server.process.wait(timeout=30)
    for region in regions:  # SIGKILL leaves them behind; these were this server's
        region.unlink(missing_ok=True)
    prometheus.wait_for('up{job="gptserve"} == 0', timeout=15)
    firing = prometheus.wait_for('ALERTS{alertname="GptserveTargetDown", alertstate="firing"}', timeout=100)
    assert firing[0][0]["severity"] == "critical" and firing[0][0]["pod"] == POD
