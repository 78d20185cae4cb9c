"""Host -> device copies that never wait for the GPU."""
from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of a CPU tensor on `device`, queued behind the work already launched. A copy from pageable memory
    would first wait for the whole stream; from pinned memory it does not (torch's caching host allocator keeps
    the pinned block until the copy is done)."""
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
