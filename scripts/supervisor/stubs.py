"""The python backend stubs of one tritonserver: a stub that exits between two periodic health checks gets one
at once, so `kill -9` of a stub is noticed in seconds whatever the check interval."""
from __future__ import annotations

from pathlib import Path

STUB = "triton_python_backend_stub"


def stub_pids(triton_pid: int) -> set[int]:
    """PIDs of the python backend stubs that tritonserver (any of its threads) started."""
    stubs = set()
    for task in Path(f"/proc/{triton_pid}/task").glob("*"):
        try:
            children = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for pid in children:
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(STUB.encode()):
                stubs.add(pid)
    return stubs


class StubWatch:
    def __init__(self) -> None:
        self.known: set[int] = set()

    def exited(self, triton_pid: int) -> set[int]:
        """The stubs seen at the previous call that are gone now (a model reload replaces its stub too)."""
        now = stub_pids(triton_pid)
        gone, self.known = self.known - now, now
        return gone
