"""Fixtures of the reliability suite (marker `reliability`): real servers started through scripts/serve.sh.

`server` is shared by every test that does not stop or break its server; the tests that kill a stub or send
SIGTERM start their own with helpers.start_server.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.triton_server import REPO_ROOT, TritonServer, configure
from tests.reliability.helpers import ADMIN_KEY, HEALTH_INTERVAL_S, QUEUE, SLOTS, STARTUP_S, STEP_MS, STREAM


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory) -> Path:
    """model_repository with gpt_large_stream at SLOTS slots, room for QUEUE waiting requests and STEP_MS per
    engine step."""
    repo = tmp_path_factory.mktemp("reliability") / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    cfg = repo / STREAM / "config.pbtxt"
    cfg.write_text(configure(cfg.read_text(), {"step_delay_ms": STEP_MS, "max_queue_size": QUEUE},
                             max_batch_size=SLOTS))
    return repo


@pytest.fixture(scope="session")
def server(small_repo):
    with TritonServer(small_repo, env={"ADMIN_KEY": ADMIN_KEY}, startup_timeout=STARTUP_S,
                      health_interval=HEALTH_INTERVAL_S) as srv:
        yield srv
