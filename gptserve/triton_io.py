"""What the Triton models share: request tensors in, response tensors out, custom metrics.

Triton's python-backend module (pb_utils) is passed in, so this file imports without a server.
"""
from __future__ import annotations

import faulthandler
import logging
import signal

import numpy as np
import torch
import torch.utils.dlpack

from .config import BATCH_BUCKETS

log = logging.getLogger("gptserve")

INPUT_NAMES = (
    "input_ids", "text_input", "max_tokens", "temperature", "top_k", "top_p", "seed", "end_id", "stop_words",
    "exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens", "stream",
)


def request_inputs(pb_utils, request) -> dict[str, np.ndarray]:
    """The request's inputs by name, as numpy arrays (absent optional inputs are left out)."""
    inputs = {}
    for name in INPUT_NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            inputs[name] = tensor.as_numpy()
    return inputs


def output_arrays(output_ids: list[int], text: str, num_input_tokens: int,
                  num_output_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Response tensors for one request (batch dimension 1)."""
    return {
        "output_ids": np.array([output_ids], dtype=np.int32).reshape(1, -1),
        "text_output": np.array([[text.encode("utf-8")]], dtype=object),
        "num_input_tokens": np.array([[num_input_tokens]], dtype=np.int32),
        "num_output_tokens": np.array([[len(output_ids) if num_output_tokens is None else num_output_tokens]],
                                      dtype=np.int32),
    }


def output_tensor(pb_utils, name: str, arr: np.ndarray):
    """A response tensor. Numeric ones travel through DLPack (a torch capsule): Triton python backends built
    before numpy 2 (the nvidia-pytriton 0.7.0 build, Triton 2.51) send numpy-built tensors with numpy >= 2
    installed with the right shape and no data, while DLPack tensors arrive intact with numpy 1 and 2 alike.
    BYTES tensors can only be built from numpy."""
    if arr.dtype == np.object_:
        return pb_utils.Tensor(name, arr)
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(arr))))


def requested_outputs(request) -> frozenset[str]:
    """The output names the client asked for; empty means all."""
    return frozenset(request.requested_output_names())


def response(pb_utils, arrays: dict[str, np.ndarray], requested: frozenset[str] = frozenset()):
    """A response with the outputs of `arrays` that the client requested (all when `requested` is empty).
    Leaving the others out is not only cheaper: Triton 2.51's python backend crashed a decoupled model's stub
    (segfault in response_sender.send, GPU instance) when a response carried outputs the client had not asked
    for, taking every in-flight stream with it."""
    return pb_utils.InferenceResponse(output_tensors=[
        output_tensor(pb_utils, k, v) for k, v in arrays.items() if not requested or k in requested
    ])


def enable_stack_dumps():
    """Every Python thread's stack goes to the server log when the stub crashes (SIGSEGV, SIGABRT, ...) and on
    `kill -USR1 <stub pid>` (for a model that hangs)."""
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def disable_stack_dumps():
    """Called at the end of finalize(): the stub's interpreter teardown that follows can segfault in garbage
    collection (seen on the H100 with Triton 2.51, for both models, after "successfully unloaded"); the model is
    gone by then, and a crash dump would only alarm."""
    faulthandler.disable()
    faulthandler.unregister(signal.SIGUSR1)


def warn_if_numpy_2():
    """Say at load time what numpy >= 2 costs on older python backends (see output_tensor)."""
    if int(np.__version__.split(".")[0]) >= 2:
        log.warning(
            "numpy %s in the model's environment: Triton python backends built before numpy 2 (such as the "
            "nvidia-pytriton 0.7.0 build, Triton 2.51) send BYTES outputs (text_output) EMPTY. Numeric outputs "
            "(output_ids, num_input_tokens, num_output_tokens) are sent through DLPack and are unaffected. "
            "Install numpy<2 for the server, or use a Triton release built for numpy 2.", np.__version__,
        )


def error_response(pb_utils, message: str, code: str = "INVALID_ARG"):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))


LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TOKEN_TIME_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


class Metrics:
    """Custom Prometheus metrics beside Triton's own; every series carries a `model` label."""

    def __init__(self, pb_utils, model_name: str):
        self._mf, self._labels = pb_utils.MetricFamily, {"model": model_name}
        self._families = []  # Triton deletes a family (and fails its metrics) when its Python object dies

        self.prompt_tokens = self.extra("gpt_prompt_tokens_total", "Prompt tokens of successful requests", "COUNTER")
        self.generated_tokens = self.extra(
            "gpt_generated_tokens_total", "Tokens generated for successful requests", "COUNTER"
        )
        self.invalid_requests = self.extra(
            "gpt_invalid_requests_total", "Requests rejected with INVALID_ARG", "COUNTER"
        )
        self.batch_size = self.extra(
            "gpt_batch_size", "Requests generated together per engine batch", "HISTOGRAM",
            buckets=[float(b) for b in BATCH_BUCKETS],
        )
        self.request_latency = self.extra(
            "gpt_request_latency_seconds", "Seconds from execute() receiving a request to its final response",
            "HISTOGRAM", buckets=LATENCY_BUCKETS,
        )
        self.max_abs_diff = self.extra(
            "gpt_max_abs_diff", "Max |logit| difference, optimized path vs eager fp32 reference, at start-up",
            "GAUGE",
        )

    def extra(self, name: str, description: str, kind: str, **kwargs):
        """One series of this model; kind: "COUNTER", "GAUGE" or "HISTOGRAM"."""
        family = self._mf(name=name, description=description, kind=getattr(self._mf, kind))
        self._families.append(family)
        return family.Metric(labels=self._labels, **kwargs)

    def record_success(self, num_input_tokens: int, num_output_tokens: int, seconds: float):
        self.prompt_tokens.increment(num_input_tokens)
        self.generated_tokens.increment(num_output_tokens)
        self.request_latency.observe(seconds)
