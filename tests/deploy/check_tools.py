"""Where the deployment check binaries are: scripts/install_check_tools.sh's virtualenv first, then PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
CHECK_TOOLS_BIN = Path(os.environ.get("CHECK_TOOLS_VENV", REPO_ROOT / ".venv" / "check-tools")) / "bin"


def tool(name: str) -> str:
    """Path of a check binary; skips the test, naming the installer, when it is not installed."""
    candidate = CHECK_TOOLS_BIN / name
    found = str(candidate) if os.access(candidate, os.X_OK) else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: run scripts/install_check_tools.sh")
    return found


def run(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kwargs)
