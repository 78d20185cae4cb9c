"""Benchmarks and profilers of the engine and the server (python -m bench.<name>); all but dispatch need a GPU."""
from __future__ import annotations

from datetime import datetime, timezone

import torch


def header() -> dict:
    """The device, date and torch version every benchmark report starts with."""
    return {"device": torch.cuda.get_device_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__}
