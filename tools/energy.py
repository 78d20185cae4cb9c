"""Energy over a window and tokens per joule.

Sources, in order: Triton's `nv_energy_consumption` counter (joules, all of the server's GPUs) on the metrics
endpoint, which measures the server wherever it runs but is refreshed only every --metrics-interval-ms (2 s by
default); else this machine's NVML total-energy counter, right only when the server runs here; else None with
the reason each source was not usable.
"""
from __future__ import annotations

from typing import Optional, Sequence

from tools.cli import ToolError
from tools.metrics import scrape


def nvml(gpu_indices: Optional[Sequence[int]] = None):
    """(pynvml module, [handles], None) when NVML works and has GPUs, else (None, [], reason)."""
    try:
        import pynvml
    except ImportError:
        return None, [], "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, [], f"no NVIDIA GPU/driver (NVML: {exc})"
    if count == 0:
        return None, [], "NVML reports no GPUs"
    indices = list(range(count)) if gpu_indices is None else list(gpu_indices)
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        return None, [], f"GPU index {bad[0]} out of range (this machine has {count})"
    return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices], None


def nvml_energy_j(pynvml, handles) -> Optional[float]:
    """Sum of the GPUs' total-energy counters in joules (None if a GPU does not support it)."""
    try:
        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1000.0
    except Exception:
        return None


def triton_energy_j(metrics_url: str) -> tuple[Optional[float], Optional[str]]:
    """(joules of Triton's nv_energy_consumption, None) or (None, why not)."""
    try:
        value = scrape(metrics_url).sum("nv_energy_consumption")
    except ToolError as exc:
        return None, str(exc)
    if value is None:
        return None, f"the server at {metrics_url} exports no nv_energy_consumption (no GPU metrics)"
    return value, None


class EnergyMeter:
    """start() picks the first working source; stop() gives the joules since start() (None, see .reason)."""

    def __init__(self, metrics_url: Optional[str] = None):
        self.metrics_url = metrics_url
        self.source: Optional[str] = None
        self.reason: Optional[str] = None
        self._start: Optional[float] = None
        self._nvml = None
        self._handles: list = []

    def start(self) -> None:
        reasons = []
        if self.metrics_url:
            value, why = triton_energy_j(self.metrics_url)
            if value is not None:
                self.source, self._start = "triton:nv_energy_consumption", value
                return
            reasons.append(why)
        else:
            reasons.append("no metrics endpoint (--metrics-url none)")
        pynvml, handles, why = nvml()
        if pynvml is not None:
            value = nvml_energy_j(pynvml, handles)
            if value is not None:
                self._nvml, self._handles = pynvml, handles
                self.source, self._start = "local:nvmlDeviceGetTotalEnergyConsumption", value
                return
            why = "the local GPU does not report a total-energy counter"
        reasons.append(why)
        self.reason = "; ".join(reasons)

    def stop(self) -> Optional[float]:
        if self._start is None:
            return None
        if self.source.startswith("triton"):
            value, why = triton_energy_j(self.metrics_url)
        else:
            value, why = nvml_energy_j(self._nvml, self._handles), "the local energy counter stopped answering"
        if value is None:
            self.reason = f"{self.source} disappeared during the window: {why}"
            return None
        return value - self._start


def tokens_per_joule(tokens: Optional[float], joules: Optional[float], reason: Optional[str]):
    """(tokens_per_joule, reason): a reason whenever the value is None."""
    if joules is None:
        return None, reason or "no energy measurement"
    if joules <= 0:
        return None, (f"energy counter did not advance over the window ({joules:.3g} J); "
                      "the window is shorter than the counter's refresh interval")
    if not tokens:
        return None, "no tokens generated in the window"
    return tokens / joules, None
