"""What every tool's command line shares: exit codes, the usage error, verdict lines and JSON output."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, Optional, Sequence

import numpy as np

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check, an SLO or the error budget failed
EXIT_USAGE = 2  # bad arguments, server unreachable or not ready (argparse also exits 2)


class ToolError(Exception):
    """A usage or connection problem: the tool prints one line and exits with EXIT_USAGE."""


def run_guarded(prog: str, fn, *args):
    """(fn(*args), None); or (None, EXIT_USAGE) after saying why, when fn raised ToolError or was interrupted."""
    try:
        return fn(*args), None
    except ToolError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
    return None, EXIT_USAGE


def verdict_line(passed: bool, notes: Sequence[str] = ()) -> str:
    """'result: PASSED' or 'result: FAILED', with what the reader must know about it (e.g. that no SLO was
    checked, or that the client fell behind) on the same line."""
    return f"result: {'PASSED' if passed else 'FAILED'}" + "".join(f" -- {n}" for n in notes)


def _clean(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_json(path: Optional[str], obj: Mapping) -> None:
    """Write obj as indented JSON (NaN/inf -> null, parent directories created); no-op for path None."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_clean(dict(obj)), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:
        return False
