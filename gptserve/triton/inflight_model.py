"""gpt_large_stream: in-flight batching, token streaming and cancellation (a decoupled model).

execute() parses each request (bad ones: INVALID_ARG) and hands the valid ones to the scheduler, where they wait
for a slot (max_queue_size, queue_timeout_ms). The model has no dynamic batcher: Triton 2.51's holds a request that
arrives while execute() runs until its next 500 ms poll. One instance: execute() returns at once. Several (one per
GPU): execute() returns once this instance could start another request, so Triton hands new requests to an
instance with room; while all are full, requests wait in Triton's own queue (no timeout there; the client's
deadline applies).
"""
from __future__ import annotations

import logging
import threading
import time

import triton_python_backend_utils as pb_utils

from ..engine import Engine
from ..serving import Final, Limits, RequestError, Scheduler, Token, parse_request
from .metrics import IN_FLIGHT, SHARED, Metrics, SchedulerMetrics
from .runtime import Instance, disable_stack_dumps
from .tensors import UnknownFields, declare, error_response, output_arrays, request_inputs, requested_outputs, response

log = logging.getLogger("gptserve")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonSink:
    """One request's response sender (called from the scheduler's delivery and cancellation threads).

    Once the final response is sent, Triton frees the request's response factory: asking it whether the request
    was cancelled after that crashed tritonserver 2.51 (SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled).
    The lock keeps the cancellation check and the final send apart, and no check follows the final send."""

    __slots__ = ("request", "sender", "requested", "lock")

    def __init__(self, request):
        self.request = request  # kept alive until the final response is sent
        self.sender = request.get_response_sender()
        self.requested = requested_outputs(request)
        self.lock = threading.Lock()

    def is_cancelled(self) -> bool:
        with self.lock:
            return self.request is not None and self.request.is_cancelled()

    def deliver(self, event):
        if isinstance(event, Token):
            arrays = output_arrays(event.ids, event.text, 0)
            self.sender.send(response(pb_utils, {k: arrays[k] for k in ("output_ids", "text_output")}, self.requested))
            return
        if isinstance(event, Final):
            arrays = output_arrays(event.ids, event.text, event.num_input_tokens, event.num_output_tokens)
            last = response(pb_utils, arrays, self.requested)
        else:
            last = error_response(pb_utils, event.message, event.code)
        with self.lock:
            self.sender.send(last, flags=FINAL)
            self.request = None


class InflightBatchingModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        return declare(auto_complete_model_config)

    def initialize(self, args):
        self.instance = instance = Instance.start(args)
        if not pb_utils.using_decoupled_model_transaction_policy(instance.model_config):
            raise ValueError(f"{instance.name} must be decoupled: model_transaction_policy {{ decoupled: true }}")
        self.metrics = Metrics(pb_utils, instance.labels, {**SHARED, **IN_FLIGHT})
        self.route_by_room = instance.instance_count > 1  # execute() waits for room so Triton picks another

        def build():  # on the engine thread: the CUDA device and compiled graphs belong to that thread
            instance.use_device()
            return Engine(instance.settings, device=instance.device)

        self.scheduler = Scheduler(build, instance.settings, SchedulerMetrics(self.metrics), on_ready=self._warm)
        self.scheduler.start()
        self.limits = Limits.of(self.scheduler.engine, allow_stream=True)
        self.metrics.engine_alive.set(1)
        log.info("%s ready: in-flight batching over %d slots", instance.name, self.scheduler.slots)

    def _warm(self, engine):  # on the engine thread
        engine.warmup()
        diff = engine.probe_max_abs_diff()
        self.metrics.max_abs_diff.set(diff)
        log.info("%s: optimized vs reference max_abs_diff=%.3g", self.instance.name, diff)

    def execute(self, requests):
        received = time.perf_counter()
        for request in requests:
            try:
                parsed = parse_request(request_inputs(pb_utils, request), self.scheduler.engine.tokenizer, self.limits)
            except (RequestError, UnknownFields) as exc:
                self.metrics.invalid_requests.increment(1)
                request.get_response_sender().send(error_response(pb_utils, str(exc)), flags=FINAL)
                continue
            self.scheduler.submit(parsed, TritonSink(request), received)
        if self.route_by_room:
            self.scheduler.wait_for_room()
        return None

    def is_ready(self) -> bool:
        """Readiness for Triton releases that ask the model (python_backend PR #430): the engine must run."""
        return self.scheduler.alive

    def finalize(self):
        log.info("%s: finalize: stopping admission, draining running sequences", self.instance.name)
        t0 = time.perf_counter()
        self.scheduler.stop()
        log.info("%s: finalize done in %.1fs", self.instance.name, time.perf_counter() - t0)
        disable_stack_dumps()
