"""Checks of Triton kernels under Triton's CPU interpreter, each in a fresh Python process: TRITON_INTERPRET must
be set before triton is first imported (its own jit helpers, such as tl.zeros, are made then), and in a test
session torch may import triton long before a kernel test runs. CI has no triton: these tests skip there."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_interpreted(module: str, function: str, *args) -> None:
    """Call module.function(*args) (args as strings) in a new process under the interpreter; fail on any error."""
    code = f"import sys; from {module} import {function}; {function}(*sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert result.returncode == 0, f"{function}{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
