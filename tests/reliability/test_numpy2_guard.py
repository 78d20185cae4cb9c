"""numpy >= 2 importable by the python-backend stub (as in the GPU image): the models refuse to load, in one line.

Triton 2.51's python backend was built before numpy 2: under numpy 2 a BYTES input (text_input) aborted the stub
and BYTES outputs went out empty. With 95f41b7 the models only warned at load, and the first text request killed
the model; now no model loads there, and the log says why and what to do.
"""
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.triton_server import REPO_ROOT, TritonServer, TritonServerError

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

NUMPY2 = REPO_ROOT / ".venv" / "numpy2-for-tests"  # a numpy 2 for this Python, installed once


@pytest.fixture(scope="module")
def numpy2_path() -> Path:
    if not (NUMPY2 / "numpy").is_dir():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(NUMPY2),
                               "numpy==2.2.6"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    return NUMPY2


def test_models_refuse_to_load_under_numpy_2(numpy2_path, tmp_path):
    # numpy 2 first on the stub's path, before the virtualenv (scripts/triton_env.sh keeps an order given whole)
    path = ":".join([str(numpy2_path), str(REPO_ROOT), *site.getsitepackages()])
    server = TritonServer(REPO_ROOT / "model_repository", env={"PYTHONPATH": path}, startup_timeout=240)
    with pytest.raises(TritonServerError):
        server.start()
    log = server.log_text()
    assert "numpy 2.2.6 is importable by the Triton python-backend stub" in log
    assert "install numpy<2 for the server, or set GPTSERVE_ALLOW_NUMPY2=1" in log
    assert log.count("numpy 2.2.6 is importable") >= 2  # both models refused
