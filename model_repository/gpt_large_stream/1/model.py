"""Triton model gpt_large_stream: in-flight batching, token streaming and cancellation (decoupled).

execute() parses each request (bad ones: INVALID_ARG), hands the valid ones to the scheduler's engine thread
(gptserve/scheduler.py) and returns None at once. The engine thread owns the model (every torch call,
start-up included); the scheduler's delivery thread sends the responses through each request's response
sender and polls request.is_cancelled(). See config.pbtxt for the response convention.

Readiness: is_ready() answers False once the engine thread has died. Python backends that include
python_backend PR #430 (2026 releases) call it for v2/models/gpt_large_stream/ready; Triton 2.51 (the pip
build used in development and CI) does not, so there the model stays READY in Triton's eyes. Either way every
request is then answered UNAVAILABLE ("engine is not running ... must be reloaded"), the error is logged at
CRITICAL, and the gauge gpt_engine_alive{model="gpt_large_stream"} drops to 0: alert on that gauge.
"""
import locale

locale.setlocale(locale.LC_ALL, "C.UTF-8")  # before torch: inductor reads UTF-8 templates; the stub starts ASCII

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from gptserve import Engine, RequestError, ServingConfig, parse_request  # noqa: E402
from gptserve.scheduler import Final, Observer, Scheduler, SchedulerConfig, Token  # noqa: E402
from gptserve.triton_io import (  # noqa: E402
    LATENCY_BUCKETS, TOKEN_TIME_BUCKETS, Metrics, disable_stack_dumps, enable_stack_dumps, error_response,
    output_arrays, request_inputs, requested_outputs, response, warn_if_numpy_2,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
log = logging.getLogger("gptserve")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonSink:
    """One request's response channel; called on the scheduler's delivery thread only."""

    __slots__ = ("request", "sender", "requested")

    def __init__(self, request):
        self.request = request  # kept alive until the final response is sent
        self.sender = request.get_response_sender()
        self.requested = requested_outputs(request)

    def is_cancelled(self) -> bool:
        return self.request.is_cancelled()

    def deliver(self, event):
        if isinstance(event, Token):
            arrays = output_arrays(event.ids, event.text, 0)
            tokens = {k: arrays[k] for k in ("output_ids", "text_output")}
            self.sender.send(response(pb_utils, tokens, self.requested))
        elif isinstance(event, Final):
            arrays = output_arrays(event.ids, event.text, event.num_input_tokens, event.num_output_tokens)
            self.sender.send(response(pb_utils, arrays, self.requested), flags=FINAL)
        else:
            self.sender.send(error_response(pb_utils, event.message, event.code), flags=FINAL)
        if not isinstance(event, Token):
            self.request = None


class TritonObserver(Observer):
    """Scheduler hooks -> Prometheus metrics (the shared ones of triton_io.Metrics plus the in-flight ones)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics
        self.in_flight = metrics.extra("gpt_inflight_requests", "Requests holding a generation slot", "GAUGE")
        self.waiting = metrics.extra("gpt_waiting_requests", "Requests waiting for a generation slot", "GAUGE")
        self.ttft = metrics.extra(
            "gpt_time_to_first_token_seconds", "Seconds from execute() receiving a request to its first token",
            "HISTOGRAM", buckets=LATENCY_BUCKETS,
        )
        self.tpot = metrics.extra(
            "gpt_time_per_output_token_seconds", "Seconds per output token after the first, per request",
            "HISTOGRAM", buckets=TOKEN_TIME_BUCKETS,
        )
        self.unavailable = metrics.extra(
            "gpt_unavailable_requests_total", "Requests answered UNAVAILABLE (queue full or wait timeout, "
            "shutdown, engine down)", "COUNTER",
        )
        self.cancelled = metrics.extra("gpt_cancelled_requests_total", "Requests cancelled by the client", "COUNTER")
        self.failed = metrics.extra("gpt_failed_requests_total", "Requests failed by an engine error", "COUNTER")
        self.engine_alive = metrics.extra("gpt_engine_alive", "1 while the engine thread runs, else 0", "GAUGE")

    def gauges(self, in_flight, waiting):
        self.in_flight.set(in_flight)
        self.waiting.set(waiting)

    def batch(self, rows):
        self.m.batch_size.observe(rows)

    def first_token(self, seconds):
        self.ttft.observe(seconds)

    def success(self, num_input_tokens, num_output_tokens, seconds, per_output_token):
        self.m.record_success(num_input_tokens, num_output_tokens, seconds)
        if per_output_token is not None:
            self.tpot.observe(per_output_token)

    def failure(self, code):
        {"UNAVAILABLE": self.unavailable, "CANCELLED": self.cancelled}.get(code, self.failed).increment(1)

    def engine_died(self, reason):
        self.engine_alive.set(0)
        log.critical("THE ENGINE THREAD IS DEAD (%s); every request is answered UNAVAILABLE until the model is "
                     "reloaded", reason)


class TritonPythonModel:
    def initialize(self, args):
        enable_stack_dumps()
        warn_if_numpy_2()
        self.name = args["model_name"]
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise ValueError(f"{self.name} must be decoupled: model_transaction_policy {{ decoupled: true }}")
        serving = ServingConfig.from_parameters(ServingConfig.triton_parameters(model_config))
        device = "cuda" if args["model_instance_kind"] == "GPU" else "cpu"
        device_id = int(args.get("model_instance_device_id", 0))
        self.metrics = Metrics(pb_utils, self.name)
        self.observer = TritonObserver(self.metrics)
        config = SchedulerConfig(
            max_queue_size=serving.max_queue_size,
            queue_timeout_s=serving.queue_timeout_ms / 1000,
            prefill_chunk=serving.prefill_chunk,
            drain_timeout_s=serving.drain_timeout_ms / 1000,
            step_delay_s=serving.step_delay_ms / 1000,
        )

        def build():  # on the engine thread: the CUDA device and compiled graphs belong to that thread
            if device == "cuda":
                import torch

                torch.cuda.set_device(device_id)
            return Engine(serving, device=device)

        def warm(engine):  # on the engine thread
            engine.warmup()
            chunk = min(config.prefill_chunk, engine.context // 2)
            engine.prefill([(1,) * chunk], [0], [chunk])  # a chunked-prefill shape (start > 0)
            engine.synchronize()
            diff = engine.probe_max_abs_diff()
            self.metrics.max_abs_diff.set(diff)
            log.info("%s: optimized vs reference max_abs_diff=%.3g", self.name, diff)

        self.scheduler = Scheduler(build, config, self.observer, on_ready=warm).start()
        self.limits = dataclasses.replace(self.scheduler.engine.limits, allow_stream=True)
        self.tokenizer = self.scheduler.engine.tokenizer
        self.observer.engine_alive.set(1)
        log.info("%s ready: in-flight batching over %d slots, %s", self.name, self.scheduler.slots, config)

    def execute(self, requests):
        received = time.perf_counter()
        for request in requests:
            if not self.scheduler.alive:
                self.observer.unavailable.increment(1)
                request.get_response_sender().send(error_response(
                    pb_utils, f"{self.name}: generation engine is not running "
                              f"({self.scheduler.dead_reason}); the model must be reloaded", "UNAVAILABLE"),
                    flags=FINAL)
                continue
            try:
                parsed = parse_request(request_inputs(pb_utils, request), self.tokenizer, self.limits)
            except RequestError as exc:
                self.metrics.invalid_requests.increment(1)
                request.get_response_sender().send(error_response(pb_utils, str(exc)), flags=FINAL)
                continue
            self.scheduler.submit(parsed, TritonSink(request), received)
        return None

    def is_ready(self) -> bool:
        """Model readiness for Triton's health endpoint: the engine thread must be running."""
        return self.scheduler.alive

    def finalize(self):
        log.info("%s: finalize: stopping admission, draining running sequences", self.name)
        t0 = time.perf_counter()
        self.scheduler.stop()
        log.info("%s: finalize done in %.1fs", self.name, time.perf_counter() - t0)
        disable_stack_dumps()
