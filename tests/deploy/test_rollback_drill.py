"""scripts/rollback_drill.sh end to end on CPU: a real tritonserver serves the candidate as version 2 beside
version 1, the real release check runs against it, and the drill pins the version that passed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.deploy.check_tools import REPO_ROOT
from tests.integration.triton_server import explain

pytestmark = pytest.mark.integration

# The drill's CPU envelope, shortened: a small workload, so that a busy CI machine still answers the warm-up's
# bursts of 16 within gpt_large's 5 s queue timeout.
SHORT_CHECK = {"DURATION": "5", "TARGET_QPS": "2", "MAX_NEW_TOKENS": "8", "WARMUP_PROMPT_LEN": "8",
               "WARMUP_MAX_TOKENS": "4"}


def drill(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    env = dict(os.environ, PYTHON=sys.executable, **SHORT_CHECK)
    proc = subprocess.run(["bash", "scripts/rollback_drill.sh", "--artifacts", str(tmp_path), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "summary.txt").read_text() if (tmp_path / "summary.txt").exists() else ""
    return proc, summary  # (proc's stderr carries the server log's tail when the server died)


def test_a_failing_candidate_is_rolled_back_and_the_previous_version_serves_again(tmp_path):
    proc, summary = drill(tmp_path, "--fail-candidate")
    assert proc.returncode == 0, explain(proc)
    assert "release check of version 2: exit 1" in summary, summary
    assert "rolled back (version 1 pinned)" in summary
    assert "version 1 serves alone: model_version 1 answered" in summary
    assert "FAILED: SLO attainment" in proc.stdout  # the check failed on its SLO, not on a broken server


def test_a_passing_candidate_is_promoted(tmp_path):
    proc, summary = drill(tmp_path, "--", "--slo", "e2e_ms=60000")
    assert proc.returncode == 0, explain(proc)
    assert "release check of version 2: exit 0" in summary, summary
    assert "promoted (version 2 pinned)" in summary
    assert "version 2 serves alone: model_version 2 answered" in summary
