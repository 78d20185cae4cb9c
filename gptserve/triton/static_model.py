"""gpt_large: Triton's dynamic batcher hands execute() up to max_batch_size requests, generated as one batch."""
from __future__ import annotations

import logging
import time

import triton_python_backend_utils as pb_utils

from ..engine import Engine
from ..serving import Limits, RequestError, generate, parse_request
from .metrics import SHARED, Metrics
from .runtime import Instance, disable_stack_dumps
from .tensors import UnknownFields, declare, error_response, output_arrays, request_inputs, requested_outputs, response

log = logging.getLogger("gptserve")


class StaticBatchingModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        return declare(auto_complete_model_config)

    def initialize(self, args):
        self.instance = Instance.start(args)
        self.metrics = Metrics(pb_utils, self.instance.labels, SHARED)
        self.instance.use_device()
        self.engine = Engine(self.instance.settings, device=self.instance.device)
        self.limits = Limits.of(self.engine)
        self.engine.warmup()
        diff = self.engine.probe_max_abs_diff()
        self.metrics.max_abs_diff.set(diff)
        log.info("%s ready: optimized vs reference max_abs_diff=%.3g", self.instance.name, diff)

    def execute(self, requests):
        received = time.perf_counter()
        responses = [None] * len(requests)
        batch = []  # (index in requests, GenerationRequest)
        for i, request in enumerate(requests):
            try:
                batch.append((i, parse_request(request_inputs(pb_utils, request), self.engine.tokenizer, self.limits)))
            except (RequestError, UnknownFields) as exc:
                self.metrics.invalid_requests.increment(1)
                responses[i] = error_response(pb_utils, str(exc))
        if not batch:
            return responses
        self.metrics.batch_size.observe(len(batch))
        try:
            results = generate(self.engine, [g for _, g in batch])
        except Exception as exc:  # an engine fault fails this batch, not the server
            log.exception("generation failed")
            for i, _ in batch:
                responses[i] = error_response(pb_utils, f"generation failed: {exc}", "INTERNAL")
            return responses
        seconds = time.perf_counter() - received
        for (i, _), result in zip(batch, results):
            arrays = output_arrays(result.output_ids, result.text, result.num_input_tokens)
            responses[i] = response(pb_utils, arrays, requested_outputs(requests[i]))
            self.metrics.record_success(result.num_input_tokens, len(result.output_ids), seconds)
        return responses

    def finalize(self):
        log.info("%s: finalize", self.instance.name)
        disable_stack_dumps()
