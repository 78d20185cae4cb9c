"""The models' own Prometheus metrics, beside Triton's nv_* ones. Every series carries `model`,
`model_instance` (Triton's instance name; not `instance`, which Prometheus gives the scrape target) and `gpu` (the
instance's GPU index, or "cpu") labels, so instances report apart.

Each update is an IPC round trip from the stub to the server: the in-flight model makes them from its metrics
thread only (gptserve.serving.telemetry).
"""
from __future__ import annotations

import logging

from ..engine import BATCH_BUCKETS
from ..serving.events import Completed, EngineDied, Failed, FirstToken, MetricEvent, Occupancy, StepRows

log = logging.getLogger("gptserve")

LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TOKEN_TIME_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]

# name: (kind, description, histogram buckets); "both" metrics first, then the in-flight model's own
SHARED = {
    "gpt_prompt_tokens_total": ("COUNTER", "Prompt tokens of successful requests", None),
    "gpt_generated_tokens_total": ("COUNTER", "Tokens generated for successful requests", None),
    "gpt_invalid_requests_total": ("COUNTER", "Requests rejected with INVALID_ARG", None),
    "gpt_batch_size": ("HISTOGRAM", "Requests generated together per engine batch (gpt_large) or sequences per "
                       "decode step (gpt_large_stream)", [float(b) for b in BATCH_BUCKETS]),
    "gpt_request_latency_seconds": ("HISTOGRAM", "Seconds from the model receiving a request to its last token",
                                    LATENCY_BUCKETS),
    "gpt_max_abs_diff": ("GAUGE", "Max |logit| difference, optimized path vs eager fp32 reference, at start-up",
                         None),
}
IN_FLIGHT = {
    "gpt_inflight_requests": ("GAUGE", "Requests holding a generation slot", None),
    "gpt_waiting_requests": ("GAUGE", "Requests waiting for a generation slot inside the model", None),
    "gpt_slots": ("GAUGE", "Generation slots (sequences the engine runs together)", None),
    "gpt_time_to_first_token_seconds": ("HISTOGRAM", "Seconds from the model receiving a request to its first token",
                                        LATENCY_BUCKETS),
    "gpt_time_per_output_token_seconds": ("HISTOGRAM", "Seconds per output token after the first, per request",
                                          TOKEN_TIME_BUCKETS),
    "gpt_unavailable_requests_total": ("COUNTER", "Requests answered UNAVAILABLE (queue wait timeout, shutdown, "
                                       "engine down)", None),
    "gpt_cancelled_requests_total": ("COUNTER", "Requests cancelled by the client", None),
    "gpt_failed_requests_total": ("COUNTER", "Requests failed by an engine error", None),
    "gpt_engine_alive": ("GAUGE", "1 while the engine thread runs, else 0", None),
}


class Metrics:
    """One metric object per name of `families`, as attributes without the gpt_ prefix and _total suffix."""

    def __init__(self, pb_utils, labels: dict[str, str], families: dict):
        mf = pb_utils.MetricFamily
        self._families = []  # Triton deletes a family (and fails its metrics) when its Python object dies
        for name, (kind, description, buckets) in families.items():
            family = mf(name=name, description=description, kind=getattr(mf, kind))
            self._families.append(family)
            extra = {"buckets": buckets} if buckets else {}
            setattr(self, name.removeprefix("gpt_").removesuffix("_total"), family.Metric(labels=labels, **extra))

    def record_success(self, num_input_tokens: int, num_output_tokens: int, seconds: float):
        self.prompt_tokens.increment(num_input_tokens)
        self.generated_tokens.increment(num_output_tokens)
        self.request_latency_seconds.observe(seconds)


class SchedulerMetrics:
    """The in-flight scheduler's metric events -> Prometheus (serving.events.Observer)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics
        self._failures = {"UNAVAILABLE": metrics.unavailable_requests, "CANCELLED": metrics.cancelled_requests}

    def observe(self, event: MetricEvent) -> None:
        m = self.m
        if isinstance(event, Occupancy):
            m.inflight_requests.set(event.running)
            m.waiting_requests.set(event.waiting)
            m.slots.set(event.slots)
        elif isinstance(event, StepRows):
            m.batch_size.observe(event.rows)
        elif isinstance(event, FirstToken):
            m.time_to_first_token_seconds.observe(event.seconds)
        elif isinstance(event, Completed):
            m.record_success(event.num_input_tokens, event.num_output_tokens, event.seconds)
            if event.per_output_token is not None:
                m.time_per_output_token_seconds.observe(event.per_output_token)
        elif isinstance(event, Failed):
            self._failures.get(event.code, m.failed_requests).increment(1)
        elif isinstance(event, EngineDied):
            m.engine_alive.set(0)
            log.critical("THE ENGINE THREAD IS DEAD (%s); every request is answered UNAVAILABLE until the model is "
                         "reloaded", event.reason)
