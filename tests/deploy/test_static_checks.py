"""Static checks of everything under deploy/ and docker/: Kustomize renders, checkov, hadolint, promtool and
systemd-analyze, plus the properties the manifests promise (probes, volumes, ports, GPU requests, signals)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.check_tools import DEPLOY, REPO_ROOT, run, tool
from tests.integration.triton_server import explain

KUSTOMIZATIONS = sorted(p.parent.relative_to(REPO_ROOT) for p in DEPLOY.rglob("kustomization.yaml"))
OVERLAYS = ("cpu", "gpu")
DRAIN_TIMEOUT_S = 10  # drain_timeout_ms default (model_repository/gpt_large_stream/config.pbtxt)
HEALTH_CHECK = ["python3", "-m", "tools.health_check"]
SYSTEMD_UNITS = ("gptserve.service", "gptserve-health.service", "gptserve-health.timer")


def render(path: Path) -> list[dict]:
    proc = run([tool("kubectl"), "kustomize", str(REPO_ROOT / path)])
    assert proc.returncode == 0, explain(proc)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(docs: list[dict], kind: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def server_container(docs: list[dict]) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=str)
def test_every_kustomization_renders(path):
    assert render(path), f"{path} rendered no resources"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pod_is_locked_down_with_writable_tmp_shm_and_compile_cache(overlay):
    docs = render(Path("deploy/k8s/overlays") / overlay)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp", "/dev/shm", "/var/cache/gptserve"}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/var/cache/gptserve/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_probes_cover_a_cold_start_and_use_the_deep_health_check(overlay):
    container = server_container(render(Path("deploy/k8s/overlays") / overlay))
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # READY 126-139 s cold on an H200
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    liveness = container["livenessProbe"]
    assert liveness["exec"]["command"][:3] == HEALTH_CHECK
    assert liveness["timeoutSeconds"] > 10  # the check's own --timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_terminates_gracefully_after_the_drain(overlay):
    docs = render(Path("deploy/k8s/overlays") / overlay)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = int(server_container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + DRAIN_TIMEOUT_S + 30  # + Triton's unload and exit
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_service_exposes_http_grpc_and_metrics(overlay):
    docs = render(Path("deploy/k8s/overlays") / overlay)
    ports = {p["name"]: p["port"] for p in find(docs, "Service")["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    container_ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert container_ports == ports


def test_only_the_gpu_overlay_requests_a_gpu():
    def gpus(overlay):
        resources = server_container(render(Path("deploy/k8s/overlays") / overlay))["resources"]
        return resources["limits"].get("nvidia.com/gpu"), resources["requests"].get("nvidia.com/gpu")

    assert gpus("gpu") == (1, 1)
    assert gpus("cpu") == (None, None)


def test_hpa_metrics_are_served_by_the_adapter_rules_from_recorded_series():
    hpa = find(render(Path("deploy/k8s/overlays/gpu")), "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    adapter = yaml.safe_load((DEPLOY / "k8s/prometheus-adapter/config.yaml").read_text())
    served = {rule["name"]["as"]: rule["seriesQuery"].split("{")[0] for rule in adapter["rules"]}
    assert wanted <= set(served), f"HPA asks for {wanted}, the adapter serves {set(served)}"
    recorded = {rule["record"] for group in yaml.safe_load((DEPLOY / "prometheus/recording_rules.yml").read_text())[
        "groups"] for rule in group["rules"] if "record" in rule}
    assert set(served.values()) <= recorded


def test_checkov_passes_every_rendered_manifest(tmp_path):
    checkov = tool("checkov")
    for path in KUSTOMIZATIONS:
        proc = run([tool("kubectl"), "kustomize", str(REPO_ROOT / path)])
        assert proc.returncode == 0, explain(proc)
        (tmp_path / f"{str(path).replace('/', '_')}.yaml").write_text(proc.stdout)
    proc = run([checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "--skip-download", "--compact",
                "--quiet"])
    assert proc.returncode == 0, explain(proc)


def test_checkov_passes_the_dockerfile():
    proc = run([tool("checkov"), "--file", str(REPO_ROOT / "docker/Dockerfile"), "--framework", "dockerfile",
                "--skip-download", "--compact", "--quiet"])
    assert proc.returncode == 0, explain(proc)


def test_hadolint_passes_the_dockerfile():
    proc = run([tool("hadolint"), str(REPO_ROOT / "docker/Dockerfile")])
    assert proc.returncode == 0, explain(proc)


def test_dockerfile_pins_its_base_by_digest_and_every_pip_package():
    dockerfile = (REPO_ROOT / "docker/Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    requirements = [line.split("#")[0].strip() for line in (REPO_ROOT / "docker/requirements.txt").read_text().splitlines()]
    assert all(re.fullmatch(r"[\w.\[\],-]+==[\w.+]+", r) for r in requirements if r), requirements
    for spec in re.findall(r"pip install ([^&;\\]+)", dockerfile):
        packages = [w for w in spec.split() if not w.startswith("-") and not w.startswith('"$') and w != "./"]
        assert all("==" in p for p in packages if not p.startswith("/tmp/")), spec


def test_image_runs_serve_sh_and_its_health_check_from_files_the_build_context_sends():
    dockerfile = (REPO_ROOT / "docker/Dockerfile").read_text()
    assert re.search(r'^CMD \["/opt/gptserve/scripts/serve\.sh"\]', dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*python3 -m tools\.health_check", dockerfile, re.M)
    allowed = {line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = {src.rstrip("/") for src in re.findall(r"^COPY\s+(\S+)", dockerfile, re.M)}
    assert copied <= allowed, f"COPY sources missing from .dockerignore's allow list: {copied - allowed}"


def test_promtool_checks_the_rules_and_the_config():
    promtool = tool("promtool")
    proc = run([promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")])
    assert proc.returncode == 0, explain(proc)


def test_promtool_unit_tests_cover_every_alert():
    proc = run([tool("promtool"), "test", "rules", str(DEPLOY / "prometheus/tests/alert_rules_test.yml")])
    assert proc.returncode == 0, explain(proc)
    alerts = {rule["alert"] for group in yaml.safe_load((DEPLOY / "prometheus/alert_rules.yml").read_text())[
        "groups"] for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load((DEPLOY / "prometheus/tests/alert_rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"


def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify, with the install path /opt/gptserve pointed at this checkout (it checks that
    ExecStart exists); any warning (an unknown key, say) fails too."""
    analyze = tool("systemd-analyze")
    for unit in SYSTEMD_UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/opt/gptserve", str(REPO_ROOT)))
    proc = run([analyze, "verify", *SYSTEMD_UNITS], cwd=tmp_path)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), explain(proc)


def test_systemd_unit_keeps_the_runbook_environment():
    unit = (DEPLOY / "systemd/gptserve.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=0" in unit
    assert re.search(r"^UnsetEnvironment=.*NCCL_P2P_DISABLE.*NCCL_P2P_LEVEL", unit, re.M)
    assert "Restart=on-failure" in unit
    assert re.search(r"^ExecStart=/opt/gptserve/scripts/serve\.sh$", unit, re.M)
