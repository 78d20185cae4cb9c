"""The python backend's shared-memory regions of one tritonserver, remembered so they can be removed after it.

A stub or server that dies by a signal leaves its /dev/shm/triton_python_backend_shm_region_* files behind. Only
regions seen mapped by this supervisor's own tritonserver are removed: other servers on the host keep theirs.
"""
from __future__ import annotations

import os
import re

REGION = re.compile(r"(/dev/shm/triton_python_backend_shm_region_[0-9A-Za-z_-]+)")


class ShmRegions:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def track(self, pid: int) -> None:
        """Remember the regions mapped by process pid right now."""
        try:
            with open(f"/proc/{pid}/maps") as maps:
                self.seen.update(REGION.findall(maps.read()))
        except OSError:  # the process is gone: what was seen before still counts
            pass

    def remove_leftovers(self) -> list[str]:
        """Delete the remembered regions that still exist; their paths."""
        removed = []
        for path in sorted(self.seen):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed
