"""Child processes of the supervisor: each in its own session, killed by the kernel if the supervisor dies."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import time

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], env: dict | None = None, stack_bytes: int = 0, **popen) -> subprocess.Popen:
    """Start argv in a new session (a Ctrl-C in the terminal reaches only the supervisor, which orchestrates the
    stop); with stack_bytes, its threads get stacks of that size (glibc sizes them from RLIMIT_STACK)."""
    def prepare() -> None:
        _die_with_parent()
        if stack_bytes:
            _, hard = resource.getrlimit(resource.RLIMIT_STACK)
            limit = stack_bytes if hard == resource.RLIM_INFINITY else min(stack_bytes, hard)
            resource.setrlimit(resource.RLIMIT_STACK, (limit, hard))
    return subprocess.Popen(argv, env=env, preexec_fn=prepare, start_new_session=True, stdin=subprocess.DEVNULL,
                            **popen)


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send sig to the process's whole group (tritonserver and its stubs)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(process: subprocess.Popen, deadline: float, interrupted=lambda: False) -> int | None:
    """The exit status once the process ends before the monotonic deadline (or interrupted() is true), else None."""
    while time.monotonic() < deadline and not interrupted():
        code = process.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    return process.poll()


def kill(process: subprocess.Popen) -> int:
    """SIGKILL the process group and reap the process; its exit status."""
    signal_group(process, signal.SIGKILL)
    return process.wait()


def exit_status(code: int) -> int:
    """A Popen return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code
