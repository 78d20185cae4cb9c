"""The models' tensor interface, declared once, and the moves between Triton tensors and Python values.

Both models declare these inputs and outputs through Triton's auto-complete (config.pbtxt leaves them out).
Triton's python-backend module (pb_utils) is passed in, so this file imports without a server.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.utils.dlpack

# name: (Triton type, dims without the batch dimension, ragged across a batch). TensorRT-LLM-style names, as
# Triton's generate endpoint, its OpenAI-compatible frontend and genai-perf send them.
INPUTS = {
    "input_ids": ("TYPE_INT32", [-1], True),
    "text_input": ("TYPE_STRING", [1], False),
    "max_tokens": ("TYPE_INT32", [1], False),
    "min_length": ("TYPE_INT32", [1], False),
    "temperature": ("TYPE_FP32", [1], False),
    "top_k": ("TYPE_INT32", [1], False),
    "top_p": ("TYPE_FP32", [1], False),
    "seed": ("TYPE_UINT64", [1], False),
    "end_id": ("TYPE_INT32", [1], False),
    "stop_words": ("TYPE_STRING", [-1], True),
    "exclude_input_in_output": ("TYPE_BOOL", [1], False),
    "return_num_input_tokens": ("TYPE_BOOL", [1], False),
    "return_num_output_tokens": ("TYPE_BOOL", [1], False),
    "stream": ("TYPE_BOOL", [1], False),
    "frequency_penalty": ("TYPE_FP32", [1], False),
    "presence_penalty": ("TYPE_FP32", [1], False),
    "repetition_penalty": ("TYPE_FP32", [1], False),
    "beam_width": ("TYPE_INT32", [1], False),
}
OUTPUTS = {
    "output_ids": ("TYPE_INT32", [-1]),
    "text_output": ("TYPE_STRING", [1]),
    "num_input_tokens": ("TYPE_INT32", [1]),
    "num_output_tokens": ("TYPE_INT32", [1]),
}


def declare(auto_complete_model_config):
    """Add every input (all optional) and output to a model's auto-completed config."""
    for name, (dtype, dims, _) in INPUTS.items():
        auto_complete_model_config.add_input({"name": name, "data_type": dtype, "dims": dims, "optional": True})
    # add_input() knows no allow_ragged_batch (python backend 2.51): without it the dynamic batcher only batches
    # requests of equal prompt lengths, so it goes on the config dict directly.
    for entry in auto_complete_model_config.as_dict()["input"]:
        if INPUTS.get(entry["name"], (None, None, False))[2]:
            entry["allow_ragged_batch"] = True
    for name, (dtype, dims) in OUTPUTS.items():
        auto_complete_model_config.add_output({"name": name, "data_type": dtype, "dims": dims})
    return auto_complete_model_config


class UnknownFields(ValueError):
    pass


def request_inputs(pb_utils, request) -> dict[str, np.ndarray]:
    """The request's inputs by name, as numpy arrays (absent optional inputs are left out). Raises UnknownFields
    for request parameters: Triton's /generate endpoint turns every JSON key that is not an input into one, so
    a misspelt field would otherwise be ignored."""
    extra = sorted(json.loads(request.parameters() or "{}"))
    if extra:
        raise UnknownFields(f"unknown field(s) {extra}; allowed: {sorted(INPUTS)}")
    inputs = {}
    for name in INPUTS:
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
    before numpy 2 send numpy-built tensors with the right shape and no data under numpy >= 2, while DLPack
    tensors arrive intact with numpy 1 and 2 alike. BYTES tensors can only be built from numpy."""
    if arr.dtype == np.object_:
        return pb_utils.Tensor(name, arr)
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(arr))))


def requested_outputs(request) -> frozenset[str]:
    """The output names the client asked for; empty means all."""
    return frozenset(request.requested_output_names())


def response(pb_utils, arrays: dict[str, np.ndarray], requested: frozenset[str] = frozenset()):
    """A response with the outputs of `arrays` that the client requested (all when `requested` is empty).
    Leaving the others out is not only cheaper: Triton 2.51's python backend crashed a decoupled model's stub
    when a response carried outputs the client had not asked for (docs/known-issues.md)."""
    return pb_utils.InferenceResponse(output_tensors=[
        output_tensor(pb_utils, k, v) for k, v in arrays.items() if not requested or k in requested
    ])


def error_response(pb_utils, message: str, code: str = "INVALID_ARG"):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))
