"""The server's Prometheus endpoint: scrape, parse (prometheus_client's text parser) and read counter deltas."""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from tools.cli import ToolError

# Counters the load test and warmup read for their window, all labelled with the model.
TRITON_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                   "nv_inference_exec_count")
GPT_COUNTERS = ("gpt_generated_tokens_total", "gpt_prompt_tokens_total", "gpt_invalid_requests_total",
                "gpt_unavailable_requests_total", "gpt_cancelled_requests_total", "gpt_failed_requests_total")


@dataclass(frozen=True)
class Sample:
    names: frozenset  # the names the sample answers to (see parse_metrics)
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Samples of the Prometheus text exposition format.

    prometheus_client presents counters the OpenMetrics way: Triton's counter `nv_inference_request_success`
    comes back as a sample named `nv_inference_request_success_total` of the family `nv_inference_request_success`.
    A counter sample therefore answers to its family's name as well as its own, so both the exposed name and
    the `_total` form find it."""
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names = {s.name, family.name} if family.type == "counter" else {s.name}
            samples.append(Sample(frozenset(names), dict(s.labels), float(s.value)))
    return samples


@dataclass
class MetricsSnapshot:
    """One scrape of the metrics endpoint."""

    samples: list[Sample] = field(default_factory=list)

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples
                if name in s.names and all(s.labels.get(k) == str(v) for k, v in labels.items())]

    def sum(self, name: str, **labels: str) -> Optional[float]:
        """Sum of the matching samples; None when the metric is absent."""
        found = self.select(name, **labels)
        return sum(s.value for s in found) if found else None

    def delta(self, before: "MetricsSnapshot", name: str, **labels: str) -> Optional[float]:
        """Counter increase from `before` to this snapshot (None when absent in either)."""
        a, b = self.sum(name, **labels), before.sum(name, **labels)
        return None if a is None or b is None else a - b


def scrape(url: str, timeout: float = 5.0) -> MetricsSnapshot:
    """Fetch and parse the metrics endpoint; ToolError saying why when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ToolError(f"metrics endpoint {url} unreachable: {getattr(exc, 'reason', exc)}") from None
    try:
        return MetricsSnapshot(parse_metrics(text))
    except ValueError as exc:
        raise ToolError(f"metrics endpoint {url} sent text that is not Prometheus format: {exc}") from None


def try_scrape(url: Optional[str], timeout: float = 5.0) -> Optional[MetricsSnapshot]:
    if not url:
        return None
    try:
        return scrape(url, timeout)
    except ToolError:
        return None


def scrape_settled(url: str, names: Sequence[str], labels: Mapping[str, str], *, interval: float = 0.1,
                   timeout: float = 3.0) -> MetricsSnapshot:
    """Scrape until the given counters stop moving (two equal reads `interval` apart) or `timeout` passes.

    A python-backend model may increment its counters just after sending a response, so the first scrape after
    the last response can miss the last increments."""
    def key(snap):
        return tuple(snap.sum(n, **labels) for n in names)

    prev = scrape(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        cur = scrape(url)
        if key(cur) == key(prev):
            return cur
        prev = cur
    return prev


def server_counter_deltas(before: MetricsSnapshot, after: MetricsSnapshot, model: str) -> dict:
    """Deltas of Triton's and the model's counters for `model` (None for counters the server does not export)."""
    out = {}
    for name in TRITON_COUNTERS + GPT_COUNTERS:
        value = after.delta(before, name, model=model)
        out[name] = None if value is None else int(round(value))
    return out


def histogram_delta_mean(before: MetricsSnapshot, after: MetricsSnapshot, name: str, **labels) -> Optional[float]:
    """Mean of a Prometheus histogram's observations between two snapshots (None if none)."""
    s = after.delta(before, f"{name}_sum", **labels)
    c = after.delta(before, f"{name}_count", **labels)
    return None if not c or s is None else s / c
