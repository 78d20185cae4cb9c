"""Triton model gpt_large: dynamic batching; each execute() generates one batch of up to 16 requests."""
import locale

locale.setlocale(locale.LC_ALL, "C.UTF-8")  # before torch: inductor reads UTF-8 templates; the stub starts ASCII

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from gptserve import Engine, RequestError, ServingConfig, parse_request  # noqa: E402
from gptserve.triton_io import (  # noqa: E402
    Metrics, disable_stack_dumps, enable_stack_dumps, error_response, output_arrays, request_inputs,
    requested_outputs, response, warn_if_numpy_2,
)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
log = logging.getLogger("gptserve")


class TritonPythonModel:
    def initialize(self, args):
        enable_stack_dumps()
        warn_if_numpy_2()
        model_config = json.loads(args["model_config"])
        serving = ServingConfig.from_parameters(ServingConfig.triton_parameters(model_config))
        device = "cuda" if args["model_instance_kind"] == "GPU" else "cpu"
        if device == "cuda":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.metrics = Metrics(pb_utils, args["model_name"])
        self.engine = Engine(serving, device=device)
        self.engine.warmup()
        diff = self.engine.probe_max_abs_diff()
        self.metrics.max_abs_diff.set(diff)
        log.info("%s ready: optimized vs reference max_abs_diff=%.3g", args["model_name"], diff)

    def execute(self, requests):
        received = time.perf_counter()
        responses = [None] * len(requests)
        batch = []  # (index in requests, GenerationRequest)
        for i, request in enumerate(requests):
            try:
                batch.append((i, parse_request(request_inputs(pb_utils, request), self.engine.tokenizer,
                                               self.engine.limits)))
            except RequestError as exc:
                self.metrics.invalid_requests.increment(1)
                responses[i] = error_response(pb_utils, str(exc))
        if batch:
            self.metrics.batch_size.observe(len(batch))
            try:
                results = self.engine.generate([g for _, g in batch])
            except Exception as exc:  # an engine fault fails this batch, not the server
                log.exception("generation failed")
                for i, _ in batch:
                    responses[i] = error_response(pb_utils, f"generation failed: {exc}", "INTERNAL")
            else:
                seconds = time.perf_counter() - received
                for (i, _), result in zip(batch, results):
                    arrays = output_arrays(result.output_ids, result.text, result.num_input_tokens)
                    responses[i] = response(pb_utils, arrays, requested_outputs(requests[i]))
                    self.metrics.record_success(result.num_input_tokens, len(result.output_ids), seconds)
        return responses

    def finalize(self):
        log.info("gpt_large: finalize")
        disable_stack_dumps()
